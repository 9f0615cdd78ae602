"""The app through its HTTP API (gradio_client), as a user's browser would drive it."""

import re
import socket

import pytest

from dphyper.config import EXAMPLES_DIR

from .test_hypernet import needs_models


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    import os

    os.environ["DPHYPER_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio_tmp"))
    from dphyper import app as app_module

    app_module.TEMP_DIR = app_module.Path(os.environ["DPHYPER_TEMP_DIR"])
    app_module.prepare_temp_dir()
    demo = app_module.build_demo()
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                max_file_size="10mb")
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def _ledger_rows(markdown: str) -> list[int]:
    return [int(m) for m in re.findall(r"^\| (\d+) \| ", markdown, flags=re.M)]


def test_privacy_summary_updates_with_epsilon():
    from dphyper.app import privacy_summary

    a, b = privacy_summary(0.0, False, 1e-5), privacy_summary(-1.0, False, 1e-5)
    assert "3.731" in a and "ε = 1" in a
    assert "ε = 0.1" in b and a != b
    assert "No privacy" in privacy_summary(0.0, True, 1e-5)


@needs_models
def test_upload_run_and_session_isolation(app_url):
    from gradio_client import Client, handle_file

    files = [handle_file(str(p)) for p in sorted((EXAMPLES_DIR / "trousers").glob("*.png"))[:40]]
    alice, bob = Client(app_url, verbose=False), Client(app_url, verbose=False)
    out = alice.predict(None, files, 0.0, False, 1e-5, 4, api_name="/run_hypernet")
    gallery, report, downloads, ledger, info = out[:5]
    assert len(gallery) == 4 and report["method"] == "hypernet" and report["epsilon"] == 1.0
    assert "40 images used" in info and any(str(d).endswith("lora.safetensors") for d in downloads)
    out = alice.predict(None, files, 0.0, False, 1e-5, 4, api_name="/run_hypernet")
    assert _ledger_rows(out[3]) == [1, 2]  # the same folder twice: two releases in Alice's ledger
    # Bob, another session, runs once on other data: he sees only his own release.
    out_b = bob.predict("sneakers", None, 0.3, False, 1e-5, 4, api_name="/run_hypernet")
    assert _ledger_rows(out_b[3]) == [1]
    assert "200 images used" in out_b[4]


@needs_models
def test_bad_upload_is_a_clear_error_and_app_keeps_serving(app_url, tmp_path):
    from gradio_client import Client, handle_file

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"definitely not a png")
    client = Client(app_url, verbose=False)
    with pytest.raises(Exception, match="No usable image"):
        client.predict(None, [handle_file(str(bad))], 0.0, False, 1e-5, 4, api_name="/run_hypernet")
    out = client.predict("bags", None, 0.0, False, 1e-5, 4, api_name="/run_hypernet")
    assert len(out[0]) == 4
