"""The app through its HTTP API (gradio_client), as a user's browser would drive it."""

import os
import re
import socket
import threading
import time

import pytest

from dphyper.config import EXAMPLES_DIR

from .test_hypernet import needs_models


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_module(tmp_path_factory):
    import os

    os.environ["DPHYPER_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio_tmp"))
    from dphyper import app as app_module

    app_module.common.TEMP_DIR = app_module.common.Path(os.environ["DPHYPER_TEMP_DIR"])
    app_module.prepare_temp_dir()
    return app_module


@pytest.fixture(scope="module")
def app_url(app_module):
    demo = app_module.build_demo()
    app_module.TEST_DEMO = demo  # for tests that inspect the server's session store
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                max_file_size="10mb", css=app_module.CSS)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def _ledger_rows(markdown: str) -> list[int]:
    return [int(m) for m in re.findall(r"^\| (\d+) \| ", markdown, flags=re.M)]


def _run(client, log_eps=0.0, n=4, api="/run_hypernet", **kw):
    args = [log_eps, False, 1e-5, n] + ([kw["max_steps"]] if "max_steps" in kw else []) + [None]
    return client.predict(*args, api_name=api)


def test_privacy_summary_updates_with_epsilon_and_n():
    from dphyper.app import privacy_summary

    a, b = privacy_summary(0.0, False, 1e-5, 200), privacy_summary(-1.0, False, 1e-5, 200)
    assert "3.731" in a and "ε = 1" in a
    assert "ε = 0.1" in b and a != b
    # Ten times the images, a tenth of the noise on the mean.
    std = [float(re.search(r"noise of std ([0-9.]+)", privacy_summary(0.0, False, 1e-5, n)).group(1)) for n in (100, 1000)]
    assert std[0] == pytest.approx(10 * std[1], rel=1e-2)
    assert "weak" in privacy_summary(0.0, False, 0.02, 100)  # delta >= 1/n is flagged
    assert "No privacy" in privacy_summary(0.0, True, 1e-5)


def test_utility_plot_marks_epsilon_and_shows_user_runs():
    from dphyper.app import curve_sets, utility_figure

    sets = curve_sets()
    bench = sets[0] if sets else None
    f1, f2 = utility_figure(0.0, False, bench, []), utility_figure(0.5, False, bench, [])
    x1 = [s["x0"] for s in f1.layout.shapes]
    x2 = [s["x0"] for s in f2.layout.shapes]
    assert x1 and x1[0] == pytest.approx(1.0) and x2[0] == pytest.approx(10 ** 0.5)
    if sets:  # the benchmark's curves are drawn, one line per method
        names = {t.name for t in f1.data}
        assert {"Hypernetwork", "DP-SGD"} <= names
    f3 = utility_figure(0.0, False, bench, [{"method": "hypernet", "epsilon": 2.0, "agreement": 0.7, "label": "x"}])
    mine = [t for t in f3.data if t.name == "your Hypernetwork runs"]
    assert mine and list(mine[0].y) == [0.7]
    assert not utility_figure(0.0, True, bench, []).layout.shapes  # no epsilon marker without privacy


def test_a_free_refit_replaces_its_releases_point_instead_of_adding_one():
    """One ε spent, one point: a re-fit moves its release's point; other runs' points stay."""
    from dphyper.app import _plot_point
    from dphyper.methods import get_method

    slicing, dpsgd = get_method("slicing"), get_method("dpsgd")
    runs: list = []
    _plot_point(runs, slicing, 1.0, 0.3, "r1", refit=False)
    _plot_point(runs, dpsgd, 1.0, 0.2, None, refit=False)
    _plot_point(runs, slicing, 2.0, 0.4, "r2", refit=False)
    _plot_point(runs, slicing, 1.0, 0.5, "r1", refit=True)
    assert [(r["release"], r["agreement"]) for r in runs] == [(None, 0.2), ("r2", 0.4), ("r1", 0.5)]
    assert "re-fit" in runs[-1]["label"] and "re-fit" not in runs[1]["label"]


@needs_models
def test_upload_run_and_session_isolation(app_url, app_module):
    from gradio_client import Client, handle_file

    files = [handle_file(str(p)) for p in sorted((EXAMPLES_DIR / "trousers").glob("*.png"))[:40]]
    alice, bob = Client(app_url, verbose=False), Client(app_url, verbose=False)
    overview, _, summary, plan = alice.predict(files, None, api_name="/load_upload")[:4]
    assert "40 images" in overview and "deleted from the server" in overview
    assert "n = 40" in summary and "10 steps" in plan  # what depends on n follows the upload
    # R3: the uploads are gone as soon as they are decoded.
    left = [p.name for p in app_module.common.TEMP_DIR.rglob("test_*.png")]
    assert not left, f"uploaded files still on disk: {left[:3]}"
    # Gradio's parser leaves empty temp files loose at the top of the cache; the session sweeper takes them.
    loose = [p for p in app_module.common.TEMP_DIR.iterdir() if p.is_file()]
    assert all(p.stat().st_size == 0 for p in loose)
    assert app_module._sweep_upload_leftovers(max_age_s=0) == len(loose)
    assert not [p for p in app_module.common.TEMP_DIR.iterdir() if p.is_file()]
    gallery, caption, downloads, report, ledger = _run(alice)[:5]
    assert len(gallery) == 4 and report["method"] == "hypernet" and report["epsilon"] == 1.0
    assert any(str(d).endswith("lora.safetensors") for d in downloads) and "ε spent 1" in caption
    ledger = _run(alice)[4]
    assert _ledger_rows(ledger) == [1, 2]  # the same folder twice: two releases in Alice's ledger
    assert "ε = 1.47" in ledger  # composed exactly (Gaussian DP), not 1 + 1
    # Bob, another session, picks an example: he sees only his own release on his own data.
    bob.predict("sneakers", api_name="/load_example")
    out_b = _run(bob, 0.3)
    assert _ledger_rows(out_b[4]) == [1] and out_b[3]["noisy_count"] > 100  # 200 sneakers, not Alice's 40
    assert _ledger_rows(_run(alice)[4]) == [1, 2, 3]


# The three cheapest columns of different kinds (one-shot, trained, re-fitted) in the default suite; every
# registered method in the slow one (the quadratic EM's n x 8 per-example gradients and DP sparse's selection
# pass over the 200 example images take minutes on the 2-core CPU; each method's own contract test is fast).
SIDE_BY_SIDE_QUICK = ("hypernet", "dpsgd", "slicing")


@needs_models
def test_three_methods_run_side_by_side_through_the_api_and_every_method_has_its_api(app_url):
    from gradio_client import Client

    from dphyper.methods import METHODS

    c = Client(app_url, verbose=False)
    endpoints = set(c.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {f"/run_{name.replace('-', '_')}" for name in METHODS} <= endpoints  # stable API names
    _side_by_side(c, SIDE_BY_SIDE_QUICK)


@needs_models
def test_every_event_of_a_result_enters_the_sessions_ledger(app_module):
    """DP sparse releases twice (its noisy selection, then its DP-SGD steps) and is not in the quick side-by-side
    run above: the app must record every event of a result, not the first, in this session's ledger."""
    import torch

    from dphyper.app import _finish, load_example
    from dphyper.ledger import LedgerBook
    from dphyper.methods import get_method
    from dphyper.methods.base import MethodResult
    from dphyper.privacy import release_mean

    data = load_example("bags")[0]
    events = tuple(release_mean(torch.rand(10, 4) / 4, epsilon=e, delta=1e-5).event for e in (0.25, 0.75))
    result = MethodResult(adapter={"w": torch.zeros(2, 2)}, report={"method": "sparse", "epsilon": 1.0, "delta": 1e-5}, events=events,
                          samples=torch.zeros(4, 1, 32, 32), adapter_format="sparse-delta")
    book = LedgerBook()
    out = _finish(get_method("sparse"), result, data, 1.0, 1.0, book, [], 0.0, False, None)
    assert len(book) == 2 and _ledger_rows(out[4]) == [1, 2]


@pytest.mark.slow
@needs_models
def test_every_registered_method_runs_side_by_side_through_the_api(app_url):
    from gradio_client import Client

    from dphyper.methods import METHODS

    assert len(METHODS) >= 3
    _side_by_side(Client(app_url, verbose=False), tuple(METHODS))


def _side_by_side(c, names):
    """The comparison iterates the registry: each method has its stable API name, fills its own
    column (gallery, caption, downloads, report) and adds its rows to the one ledger."""
    from dphyper.methods import ADAPTER_FILES, METHODS

    c.predict("bags", api_name="/load_example")
    rows = 0
    for name in names:
        method = METHODS[name]
        kw = {} if method.one_shot else {"max_steps": 2}
        out = _run(c, api=f"/run_{name.replace('-', '_')}", **kw)
        gallery, caption, downloads, report, ledger = out[:5]
        rows += 2 if name == "sparse" else 1  # sparse: one row for its selection, one for its DP-SGD steps
        assert len(gallery) == 4 and report["method"] == name and method.label in caption
        assert sorted(os.path.basename(f) for f in downloads) == sorted(
            ["grid.png", ADAPTER_FILES[method.adapter_format], "report.json"])
        if method.refit is not None:  # slicing: the step budget is its free fit's
            assert report["fit_steps"] == 2 and report["epsilon"] == 1.0
        elif not method.one_shot:
            assert report["steps"] == 2 and report["epsilon_spent"] <= 1.0 + 1e-9
        assert _ledger_rows(ledger) == list(range(1, rows + 1)) and method.label in ledger
        if method.refit is not None:  # re-fitting the kept release: new samples, no ledger row
            again = c.predict(4, 3, None, api_name=f"/refit_{name.replace('-', '_')}")
            assert len(again[0]) == 4 and again[3]["fit_steps"] == 3 and "refit" in again[3]
            assert again[3]["fit_seed"] != report["fit_seed"] or again[3]["sampling_seed"] != report["sampling_seed"]
            assert again[4] == ledger, "a re-fit must not touch the ledger"
    assert "PLD accountant" in ledger


@needs_models
@pytest.mark.parametrize("name, fit, step", [("dp-merf", "dphyper.methods.dp_merf", "train_lora_on"),
                                             ("slicing", "dphyper.methods.slicing", "train_lora_on"),
                                             ("private-evolution", "dphyper.diffusion", "vary")])
def test_a_failure_after_the_release_still_counts_in_the_ledger(app_module, monkeypatch, name, fit, step):
    """A DP cold review (issue 36): a free fit that fails after the release shows nothing, but the release was
    made, so the session's ledger records it (and the page says so); before, the event was lost."""
    import importlib

    import gradio as gr

    from dphyper.app import load_example
    from dphyper.app.runs import training_runner
    from dphyper.ledger import LedgerBook

    def boom(*a, **k):
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(importlib.import_module(fit), step, boom)
    data = load_example("bags")[0]
    book = LedgerBook()
    gen = training_runner(name)(data, 0.0, False, 1e-5, 4, 8, book, [], None, progress=None)  # budget 8: small
    with pytest.raises(gr.Error, match="counted in the ledger"):
        for _ in gen:
            pass
    assert len(book) == 1
    eps = book.view(data["fingerprints"]).epsilon
    if name == "private-evolution":  # it failed in round 1's variations: one of its T histograms was made
        import math

        from dphyper.methods.private_evolution import PEConfig
        from dphyper.privacy import analytic_gaussian_epsilon, calibrate_gaussian

        rounds = PEConfig().rounds  # each histogram's multiplier is sqrt(T) s (T rounds compose to s)
        assert rounds >= 2
        one = analytic_gaussian_epsilon(noise_multiplier=math.sqrt(rounds) * calibrate_gaussian(epsilon=1.0, delta=1e-5),
                                        delta=1e-5)
        assert eps == pytest.approx(one, rel=1e-3) and eps < 1.0
    else:
        assert eps == pytest.approx(1.0, rel=1e-3)


@needs_models
def test_dpsgd_cancel_stops_the_worker_and_releases_nothing(app_module):
    from dphyper.app import load_example, run_dpsgd

    from dphyper.ledger import LedgerBook

    data = load_example("bags")[0]
    book = LedgerBook()
    gen = run_dpsgd(data, 0.0, False, 1e-5, 4, 500, book, [], None, progress=None)
    t0 = time.time()
    for out in gen:
        if "DP-SGD step" in str(out[1]):  # training has started: cancel mid-run
            break
        assert time.time() - t0 < 120
    gen.close()  # what Gradio does when Cancel is pressed or the page goes away
    t0 = time.time()
    while any(t.name == "dpsgd-worker" for t in threading.enumerate()):
        assert time.time() - t0 < 30, "the DP-SGD worker kept running after cancel"
        time.sleep(0.2)
    assert len(book) == 0  # nothing was released, nothing recorded


@needs_models
def test_bad_upload_is_a_clear_error_and_app_keeps_serving(app_url, tmp_path):
    from gradio_client import Client, handle_file

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"definitely not a png")
    client = Client(app_url, verbose=False)
    with pytest.raises(Exception, match="No usable image"):
        client.predict([handle_file(str(bad))], None, api_name="/load_upload")
    client.predict("bags", api_name="/load_example")
    assert len(_run(client)[0]) == 4


@needs_models
def test_noise_view_moves_with_epsilon():
    import torch

    from dphyper.app import noise_figure

    clean = torch.zeros(64)
    clean[0] = 0.5
    f = noise_figure(clean, clean + 0.1, 1.0)
    named = {t.name: t for t in f.data}
    assert "your exact mean (only you see this)" in named and "released noisy mean" in named
    assert (named["released noisy mean"].x[0], named["released noisy mean"].y[0]) != \
        (named["your exact mean (only you see this)"].x[0], named["your exact mean (only you see this)"].y[0])


@needs_models
def test_eight_concurrent_sessions_stay_isolated_and_nothing_private_is_logged(app_url, tmp_path, caplog, capfd):
    """R2: 8 sessions upload different folders at once; each sees only its own data. No file name in logs."""
    import logging
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    caplog.set_level(logging.DEBUG)
    sources = sorted((EXAMPLES_DIR / "bags").glob("*.png")) + sorted((EXAMPLES_DIR / "dresses").glob("*.png"))

    def session(i: int) -> dict:
        n = 20 + 10 * i
        folder = tmp_path / f"user{i}"
        folder.mkdir()
        files = []
        for j, src in enumerate(sources[i * 40: i * 40 + n]):
            dst = folder / f"PRIVATE_USER{i}_{j:04d}.png"
            shutil.copy(src, dst)
            files.append(handle_file(str(dst)))
        c = Client(app_url, verbose=False)
        overview = c.predict(files, None, api_name="/load_upload")[0]
        out = c.predict(0.9, False, 1e-5, 4, None, api_name="/run_hypernet")  # log10 eps 0.9: eps ~ 7.9
        return {"n": n, "overview": overview, "report": out[3], "ledger": out[4], "gallery": out[0],
                "downloads": out[2]}

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(session, range(8)))
    for i, r in enumerate(results):
        assert f"**{r['n']} images**" in r["overview"]
        assert abs(r["report"]["noisy_count"] - r["n"]) < 6, (i, r["report"]["noisy_count"], r["n"])
        assert _ledger_rows(r["ledger"]) == [1] and len(r["gallery"]) == 4
        assert "PRIVATE_USER" not in str(r["report"]) and "PRIVATE_USER" not in r["ledger"]
        assert _samples_come_from_own_lora(r), f"session {i}'s samples did not come from its own LoRA"
    out, err = capfd.readouterr()
    logged = "\n".join(rec.getMessage() for rec in caplog.records) + out + err
    assert "PRIVATE_USER" not in logged, "a private file name reached the logs"


def _samples_come_from_own_lora(r: dict) -> bool:
    """Re-create a session's samples from *its* downloaded LoRA and reported sampling seed."""
    import numpy as np
    import torch
    from PIL import Image

    from dphyper.data import make_grid
    from dphyper.diffusion import load_unet, sample
    from dphyper.lora import load_lora_into

    files = {str(d).rsplit("/", 1)[-1]: str(d) for d in r["downloads"]}
    unet = load_lora_into(load_unet(device=torch.device("cpu")), files["lora.safetensors"])
    rep = r["report"]
    x = sample(unet, rep["samples"], steps=rep["sampling_steps"], seed=rep["sampling_seed"])
    mine = np.asarray(make_grid(x)).astype(int)
    got = np.asarray(Image.open(files["grid.png"])).astype(int)
    return mine.shape == got.shape and float((np.abs(mine - got) > 1).mean()) < 1e-3


def test_hosted_demo_mode_warns_or_turns_uploads_off(monkeypatch, tmp_path):
    """DPHYPER_HOSTED: a local run has no restriction; "warn" shows the hosted-server warning;
    "examples" hides the upload and refuses uploaded files through the API as well."""
    import gradio as gr

    from dphyper import app

    def page_text(demo) -> str:
        return " ".join(str(b.value) for b in demo.blocks.values() if isinstance(b, gr.Markdown))

    monkeypatch.delenv("DPHYPER_HOSTED", raising=False)
    assert app.hosted_mode() == "" and "hosted demo" not in page_text(app.build_demo())
    monkeypatch.setenv("DPHYPER_HOSTED", "warn")
    assert "whoever runs it can see what you upload" in page_text(app.build_demo())
    monkeypatch.setenv("DPHYPER_HOSTED", "examples")
    demo = app.build_demo()
    assert "Uploads are switched off" in page_text(demo)
    img = tmp_path / "a.png"
    img.write_bytes(b"not decoded")
    with pytest.raises(gr.Error, match="switched off"):
        app.load_data(None, [str(img)])
    assert app.load_data("bags")[0]["n"] > 0  # the examples still work
    monkeypatch.setenv("DPHYPER_HOSTED", "typo")
    with pytest.raises(ValueError):
        app.hosted_mode()


def test_sweeper_deletes_only_old_loose_files_of_the_upload_cache(app_module, tmp_path, monkeypatch):
    import os
    import time

    # a cache of its own: the real one is shared with any other app or test run on the machine, whose
    # Gradio leftovers once made the count 2 here
    monkeypatch.setattr(app_module.common, "TEMP_DIR", tmp_path)
    top = app_module.common.TEMP_DIR
    old_file, new_file, run = top / "tmpold", top / "tmpnew", top / "run-keep"
    old_file.write_bytes(b"")
    new_file.write_bytes(b"")
    run.mkdir(exist_ok=True)
    (run / "grid.png").write_bytes(b"x")
    past = time.time() - 600
    os.utime(old_file, (past, past))
    os.utime(run / "grid.png", (past, past))
    assert app_module._sweep_upload_leftovers(max_age_s=120) == 1
    assert not old_file.exists() and new_file.exists() and (run / "grid.png").exists()
    new_file.unlink()


def test_method_galleries_fit_their_columns():
    from dphyper.app import gallery_columns

    # More methods side by side: narrower columns, fewer thumbnails per row (never more than 4).
    widths = [gallery_columns(k) for k in range(1, 8)]
    assert widths == sorted(widths, reverse=True) and widths[0] == 4 and widths[-1] == 2


def _stop_result():
    import torch

    from dphyper.methods.base import MethodResult
    from dphyper.privacy import release_mean

    ev = release_mean(torch.rand(10, 4) / 4, epsilon=1.0, delta=1e-5).event
    return MethodResult(adapter={"w": torch.zeros(2, 2)}, report={"method": "sparse", "epsilon": 1.0, "delta": 1e-5},
                        events=(ev,), samples=torch.zeros(2, 1, 32, 32), adapter_format="sparse-delta")


def test_stop_says_what_the_ledger_says():
    """Issue 37: a Stop that lands before the run records its events keeps "nothing was released" true (the run
    then records and shows nothing); a Stop after the record says that its ε is counted."""
    import gradio as gr

    from dphyper.app import _finish, _start_run, load_example, stop_message
    from dphyper.ledger import LedgerBook
    from dphyper.methods import get_method

    data, sparse, book = load_example("bags")[0], get_method("sparse"), LedgerBook()
    token = _start_run(data, "sparse")
    assert "nothing was released" in stop_message("sparse", data)  # Stop first ...
    with pytest.raises(gr.Error, match="nothing was released"):  # ... then the worker's result arrives
        _finish(sparse, _stop_result(), data, 1.0, 1.0, book, [], 0.0, False, None, token=token)
    assert len(book) == 0
    token = _start_run(data, "sparse")  # a new run that finishes: Stop afterwards changes nothing on the page
    _finish(sparse, _stop_result(), data, 1.0, 1.0, book, [], 0.0, False, None, token=token)
    assert len(book) == 1 and stop_message("sparse", data) == ""
    from dphyper.app import _stop_outputs

    assert _stop_outputs("") == (gr.skip(), gr.skip())  # caption and samples stay
    # Stop inside the window between the ledger record and the outputs: its ε is counted, and it says so.
    token = _start_run(data, "sparse")
    data["run_states"]["sparse"][token]["recorded"] = True
    msg = stop_message("sparse", data)
    assert "counted in the ledger" in msg and "nothing was released" not in msg
    assert _stop_outputs(msg)[0] == msg
    # A cancelled run's column loses the samples of an earlier run (they would read as the cancelled run's).
    assert _stop_outputs("**X** cancelled: nothing was released and no privacy was spent.")[1] == []


def test_a_stopped_run_stays_stopped_when_another_starts():
    """Stop run A, start run B at once (Gradio's cancel does not stop A's thread): A, finishing later, records
    nothing; B records; the page's words and the ledger agree at every point."""
    import gradio as gr

    from dphyper.app import _finish, _start_run, load_example, stop_message
    from dphyper.ledger import LedgerBook
    from dphyper.methods import get_method

    data, sparse, book = load_example("bags")[0], get_method("sparse"), LedgerBook()
    a = _start_run(data, "sparse")
    assert "nothing was released" in stop_message("sparse", data)
    b = _start_run(data, "sparse")
    with pytest.raises(gr.Error, match="nothing was released"):
        _finish(sparse, _stop_result(), data, 1.0, 1.0, book, [], 0.0, False, None, token=a)
    assert len(book) == 0
    _finish(sparse, _stop_result(), data, 1.0, 1.0, book, [], 0.0, False, None, token=b)
    assert len(book) == 1


def test_a_stopped_release_is_never_kept_for_a_refit():
    """A release is kept for slicing's free re-fit only once its events are in the ledger: a run stopped at its
    last moment leaves nothing to re-fit (a re-fit would show an unrecorded release)."""
    import gradio as gr

    from dphyper.app import _finish, _start_run, load_example, stop_message
    from dphyper.ledger import LedgerBook
    from dphyper.methods import get_method

    data, slicing, book = load_example("bags")[0], get_method("slicing"), LedgerBook()
    token = _start_run(data, "slicing")
    stop_message("slicing", data)
    with pytest.raises(gr.Error):
        _finish(slicing, _stop_result(), data, 1.0, 1.0, book, [], 0.0, False, None, token=token,
                keep=("release", None, "tag"))
    assert "slicing" not in data.get("releases", {}) and len(book) == 0
    token = _start_run(data, "slicing")
    _finish(slicing, _stop_result(), data, 1.0, 1.0, book, [], 0.0, False, None, token=token,
            keep=("release", None, "tag"))
    assert data["releases"]["slicing"][0] == "release" and len(book) == 1


def test_the_public_api_is_what_a_client_should_call():
    """Issue 33: the API page lists only the endpoints a client should call, under stable names derived from the
    registry (no generated /lambda_3, /LedgerBook, /list, internal plumbing)."""
    from dphyper.app import build_demo, public_api
    from dphyper.methods import METHODS

    named = set(build_demo().get_api_info()["named_endpoints"])
    assert named == {"/" + n for n in public_api()}
    assert {"/load_example", "/load_upload", "/plan", "/audit", "/sample_base"} <= named
    assert all(f"/run_{m.replace('-', '_')}" in named for m in METHODS)


@needs_models
def test_run_it_again_shows_the_spread_and_the_ledger_counts_every_run():
    """Issue 38: k re-runs at one ε are k releases: k ledger rows, k stars on the curve, a strip of each run's
    samples; the cost said before the click is what the ledger then composes."""
    import re as _re

    from dphyper.app import load_example, rerun, rerun_cost
    from dphyper.ledger import LedgerBook

    data, book, runs = load_example("bags")[0], LedgerBook(), []
    cost = rerun_cost(-0.6, False, 1e-5, 3)
    strip, text, ledger, *_ = rerun("hypernet", 3, data, -0.6, False, 1e-5, book, runs, "sneakers-100")
    assert len(book) == 3 and _ledger_rows(ledger) == [1, 2, 3] and len(runs) == 3
    assert len(strip) == 12 and [c for _, c in strip[:5]] == ["run 1"] * 4 + ["run 2"]
    assert "3 runs of Hypernetwork" in text and "±" in text
    said = float(_re.search(r"spend \*\*ε = ([\d.]+)\*\*", cost).group(1))
    total = float(_re.search(r"Total spent on these images: ε = ([\d.]+)", ledger.replace("*", "")).group(1))
    assert said == pytest.approx(total, rel=2e-2), (cost, ledger[-400:])


def test_a_run_hands_its_freed_memory_back():
    """Issue 37 (memory): after every run (done, failed or cancelled) the app collects and trims the allocator, so
    the server does not grow by each run's peak (it reached 4.3 GB after a dozen runs without it)."""
    import torch

    import dphyper.memory as memory
    from dphyper import app

    calls = []
    real = memory.release_memory
    try:
        memory.release_memory = lambda: calls.append(1) or real()
        with pytest.raises(ValueError):
            app._run("hypernet", torch.zeros(0, 1, 32, 32), None)  # a failing run releases too
        assert calls == [1]
    finally:
        memory.release_memory = real
    real()  # and it runs here (glibc's malloc_trim, or nothing elsewhere)


def test_the_server_caps_the_allocators_arenas_before_its_threads_start(monkeypatch):
    """Issue 37 (memory): ``launch`` limits glibc's malloc arenas before Gradio makes worker threads (each
    thread would otherwise get an arena whose freed blocks no other thread reuses), and on glibc the allocator
    accepts the setting."""
    import sys

    import dphyper.memory as memory
    from dphyper import app

    order = []
    monkeypatch.setattr(memory, "limit_arenas", lambda count=2: order.append("arenas") or True)
    serve = sys.modules["dphyper.app.serve"]  # the room that launches (``app.launch`` is its function)
    monkeypatch.setattr(serve, "prepare_temp_dir", lambda: order.append("temp"))

    def stop():
        order.append("warm")
        raise RuntimeError("stop before the server")

    monkeypatch.setattr(serve, "warm_up", stop)
    with pytest.raises(RuntimeError, match="stop before"):
        app.launch()
    assert order == ["arenas", "temp", "warm"]
    monkeypatch.undo()
    if sys.platform.startswith("linux") and memory._glibc():
        assert memory.limit_arenas(2) is True


def test_the_curve_draws_the_benchmarks_interval_as_a_band(monkeypatch):
    """Issue 38: where the benchmark holds repeated runs of a cell, the privacy-utility figure shades its 95 %
    interval around the mean; a method whose cells have one run each gets no band."""
    from dphyper import app
    from dphyper.compare import summarise
    from dphyper.plots import curves

    def cell(method, eps, rep, fid, agreement):
        return {"set": "s", "method": method, "epsilon": eps, "samples": 8, "sampling_steps": 2, "fid": fid,
                "kid": 1.0, "agreement": agreement, "seconds_to_lora": 1.0, "method_id": "x", "repeat": rep}

    cells = [cell("hypernet", e, r, 100 + 10 * r, 0.5 + 0.1 * r) for e in (1.0, 4.0) for r in range(3)]
    cells += [cell("dpsgd", e, 0, 300.0, 0.1) for e in (1.0, 4.0)]
    res = {"cells": dict(enumerate(cells)), "sets": {"s": {"n": 100}},
           "method_ids": {"hypernet": {"100": "x"}, "dpsgd": {"100": "x"}}}
    summ = summarise(res, ("s",), 8, 2)
    assert summ["s"]["hypernet"]["1.0"]["fid_half"] == pytest.approx(4.303 * 10 / 3 ** 0.5, rel=1e-3)  # t(0.975, 2)
    assert summ["s"]["dpsgd"]["1.0"]["fid_half"] is None
    curv = curves(summ, {"s": {"n": 100, "kind": "single-class"}}, {})
    assert "fid_half" in curv["sets"]["s"]["methods"]["hypernet"] and "fid_half" not in curv["sets"]["s"]["methods"]["dpsgd"]
    monkeypatch.setattr(app.figures, "_curves", lambda: curv)
    fig = app.utility_figure(0.0, False, "s")
    bands = [t for t in fig.data if t.fill == "tonexty"]
    assert len(bands) == 2  # FID and agreement, hypernet only
    upper = [t for t in fig.data if t.fill is None and t.legendgroup == "hypernet" and not t.showlegend
             and t.mode == "lines"]
    assert upper and upper[0].y[0] == pytest.approx(110 + 4.303 * 10 / 3 ** 0.5, rel=1e-3)
