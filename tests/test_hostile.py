"""Issue 6 R1: a hostile folder through the Python API, the CLI and the app alike.

Every file either loads or is skipped with a per-file reason; a folder with nothing usable
is one clear error; no traceback reaches the user; the app keeps serving.
"""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dphyper.data import DataError, load_folder

from .test_hypernet import needs_models


def _garment(size=(28, 28), mode="L") -> Image.Image:
    arr = np.zeros(size[::-1], dtype=np.uint8)
    h, w = arr.shape
    arr[h // 5: 4 * h // 5, w // 3: 2 * w // 3] = 230
    return Image.fromarray(arr, "L").convert(mode)


def build_hostile(folder):
    """Returns (expected good names, expected rejected names)."""
    folder.mkdir(parents=True, exist_ok=True)
    good, bad = [], []

    def ok(name, im, **kw):
        im.save(folder / name, **kw)
        good.append(name)

    ok("plain.png", _garment())
    ok("cmyk.jpg", _garment(mode="CMYK"), format="JPEG")
    ok("rgba.png", _garment(mode="RGBA"))
    ok("sixteen.png", Image.fromarray((np.asarray(_garment()).astype(np.uint16) * 257), "I;16"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    ok("rotated.jpg", _garment(mode="RGB"), format="JPEG", exif=exif)
    frames = [_garment(mode="P"), Image.new("P", (28, 28))]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    good.append("anim.gif")
    ok("image.webp", _garment(mode="RGB"), format="WEBP")
    ok("image.tiff", _garment(), format="TIFF")
    ok("image.bmp", _garment(mode="RGB"), format="BMP")
    ok("one_pixel.png", Image.new("L", (1, 1), 200))
    ok("large.png", _garment(size=(2500, 2500)))
    ok("name with spaces ü 😀.png", _garment())
    ok("-starts-with-dash.png", _garment())
    ok("semi;colon'quote.png", _garment())
    (folder / "nested" / "deeper").mkdir(parents=True)
    ok("nested/deeper/inner.png", _garment())
    ok("palette.png", _garment(mode="P"))

    def reject(name, data: bytes):
        (folder / name).write_bytes(data)
        bad.append(os.path.basename(name))

    reject("empty.png", b"")
    reject("not_really.png", b"this is text, not a PNG")
    reject("notes.txt", b"hello")
    reject("drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28"><rect width="9" height="9"/></svg>')
    buf = io.BytesIO()
    _garment(size=(64, 64)).save(buf, "PNG")
    reject("truncated.png", buf.getvalue()[: len(buf.getvalue()) // 2])
    Image.new("1", (30000, 30000)).save(folder / "bomb.png")  # ~100 kB file, 900 M pixels
    bad.append("bomb.png")
    (folder / ".hidden.png").write_bytes(b"ignored")  # hidden files are not even looked at
    return good, bad


def test_hostile_folder_python_api(tmp_path):
    good, bad = build_hostile(tmp_path / "hostile")
    res = load_folder(tmp_path / "hostile")
    assert res.n == len(good)
    assert sorted(n for n, _ in res.rejected) == sorted(bad)
    assert all(why and "Traceback" not in why for _, why in res.rejected)
    reasons = dict(res.rejected)
    assert "pixel limit" in reasons["bomb.png"] and "empty" in reasons["empty.png"]
    assert "not an image" in reasons["drawing.svg"] and "truncated" in reasons["truncated.png"]
    assert (res.images.abs() <= 1).all() and res.images.isfinite().all()


def test_thousands_of_tiny_files_and_the_image_limit(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    tiny = io.BytesIO()
    Image.new("L", (2, 2), 128).save(tiny, "PNG")
    for i in range(2500):
        (folder / f"t{i:05d}.png").write_bytes(tiny.getvalue())
    res = load_folder(folder, max_images=2000)
    assert res.n == 2000 and len(res.rejected) == 500
    assert all("limit of 2000 images" in why for _, why in res.rejected)


def test_nothing_usable_is_one_clear_error(tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "b.txt").write_text("x")
    with pytest.raises(DataError, match="No usable image"):
        load_folder(folder)


@needs_models
def test_hostile_folder_cli(tmp_path, capsys):
    build_hostile(tmp_path / "hostile")
    env = {**os.environ, "DPHYPER_DEVICE": "cpu"}
    run = subprocess.run([sys.executable, "-m", "dphyper", "generate", "--images", str(tmp_path / "hostile"),
                          "--epsilon", "1", "--samples", "2", "--steps", "2", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "skipped bomb.png" in run.stderr
    assert (tmp_path / "out" / "lora.safetensors").exists()
    report = (tmp_path / "out" / "report.json").read_text()
    assert "bomb" not in report and "hostile" not in report  # no file or folder names in DP outputs
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.png").write_bytes(b"nope")
    from dphyper.__main__ import main  # in-process: the same entry point, without a second interpreter start

    capsys.readouterr()
    code = main(["dpsgd", "--images", str(junk), "--epsilon", "1", "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: No usable image"), err


@needs_models
def test_hostile_upload_in_the_app(tmp_path):
    from dphyper import app

    good, bad = build_hostile(tmp_path / "hostile")
    paths = [p for p in (tmp_path / "hostile").rglob("*") if p.is_file() and not p.name.startswith(".")]
    old = app.common.TEMP_DIR
    app.common.TEMP_DIR = tmp_path  # the uploads "live" in the app's temp dir: they must be deleted after decoding
    try:
        data, overview, thumbs = app.load_data(None, [str(p) for p in paths], None)
    finally:
        app.common.TEMP_DIR = old
    assert f"Skipped {len(bad)} file(s)" in overview
    # Several good files decode to the same pixels (one picture saved in many formats): each image counts
    # once, the copies are dropped before any release and the page says so.
    import re as _re

    dupes = int(_re.search(r"(\d+) identical duplicate", overview).group(1)) if "identical duplicate" in overview else 0
    assert data["n"] + dupes == len(good) and data["n"] == len(data["fingerprints"])
    assert "bomb.png" in overview and thumbs.startswith("<img")
    assert not [p for p in paths if p.exists()], "uploaded files must be gone after decoding"
