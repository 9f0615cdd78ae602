import gzip
import io

import numpy as np
import pytest
import torch
from PIL import Image

from dphyper.data import (DataError, load_fashion_mnist, load_folder, load_image_file, make_grid, pil_to_tensor,
                          save_pngs)

from .conftest import needs_fmnist


def _square(mode: str, size=(28, 28)) -> Image.Image:
    """A bright 10x10 square at the top-left quadrant on a dark background."""
    arr = np.zeros(size[::-1], dtype=np.uint8)
    arr[4:14, 4:14] = 255
    return Image.fromarray(arr, "L").convert(mode)


def _check_square(x: torch.Tensor):
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    # 28x28 content is padded by 2: the square sits at rows/cols 6..15
    assert x[0, 8:14, 8:14].mean() > 0.9
    assert x[0, 20:30, 20:30].max() < -0.9


@pytest.mark.parametrize("mode", ["L", "RGB", "P", "CMYK"])
def test_modes_load(tmp_path, mode):
    p = tmp_path / f"img_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    _square(mode).save(p)
    _check_square(load_image_file(p))


def test_rgba_transparent_background_becomes_black(tmp_path):
    arr = np.zeros((28, 28, 4), dtype=np.uint8)
    arr[..., :3] = 255  # white everywhere ...
    arr[4:14, 4:14, 3] = 255  # ... but only the square is opaque
    p = tmp_path / "a.png"
    Image.fromarray(arr, "RGBA").save(p)
    _check_square(load_image_file(p))


def test_16bit_png(tmp_path):
    arr = np.zeros((28, 28), dtype=np.uint16)
    arr[4:14, 4:14] = 65535
    p = tmp_path / "deep.png"
    Image.fromarray(arr, "I;16").save(p)
    _check_square(load_image_file(p))


def test_jpeg_and_resize(tmp_path):
    p = tmp_path / "big.jpg"
    _square("RGB", size=(280, 280)).resize((280, 280)).save(p, quality=95)
    x = load_image_file(p)
    assert x.shape == (1, 32, 32)


def test_exif_rotation_is_applied(tmp_path):
    im = _square("L")
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif, quality=95)
    x = load_image_file(p)
    assert x[0, 18:26, 18:26].mean() > 0.8  # the square moved to the other corner


@pytest.mark.parametrize("content,reason", [
    (b"", "empty"),
    (b"this is not an image at all" * 10, "not an image"),
])
def test_bad_files_name_the_file(tmp_path, content, reason):
    p = tmp_path / "holiday_photo.png"
    p.write_bytes(content)
    with pytest.raises(DataError, match=rf"holiday_photo\.png.*{reason}"):
        load_image_file(p)


def test_truncated_png(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, "PNG")
    p = tmp_path / "cut.png"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DataError, match=r"cut\.png"):
        load_image_file(p)


def test_decompression_bomb_refused_from_header(tmp_path):
    p = tmp_path / "bomb.png"
    Image.new("1", (30000, 30000)).save(p)  # tiny file, 900 M pixels
    with pytest.raises(DataError, match=r"bomb\.png.*pixel limit"):
        load_image_file(p)


def test_folder_skips_bad_and_reports(tmp_path):
    _square("L").save(tmp_path / "good1.png")
    _square("RGB").save(tmp_path / "good2.jpg")
    (tmp_path / "notes.txt").write_text("hello")
    res = load_folder(tmp_path)
    assert res.n == 2
    assert [name for name, _ in res.rejected] == ["notes.txt"]


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="empty"):
        load_folder(tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_folder(tmp_path / "missing")


def test_missing_fashion_mnist_names_apt_package(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)


def test_fashion_mnist_from_idx(tmp_path):
    imgs = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(b"\0" * 16 + imgs.tobytes())
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(b"\0" * 8 + bytes([3, 7]))
    x, y = load_fashion_mnist("test", root=tmp_path)
    assert x.shape == (2, 1, 32, 32) and y.tolist() == [3, 7]
    assert torch.all(x[:, :, :2] == -1)  # padding is background
    assert torch.allclose(x[0, 0, 2, 2], torch.tensor(imgs[0, 0, 0] / 127.5 - 1, dtype=torch.float32))


@needs_fmnist
def test_real_fashion_mnist(fmnist_test):
    x, y = fmnist_test
    assert x.shape == (10000, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert sorted(torch.bincount(y).tolist()) == [1000] * 10


def test_png_round_trip_is_lossless(tmp_path):
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    x = ((x + 1) * 127.5).round() / 127.5 - 1  # exactly representable in uint8
    paths = save_pngs(x, tmp_path)
    back = torch.stack([pil_to_tensor(Image.open(p).crop((2, 2, 30, 30))) for p in paths])
    assert torch.allclose(back[..., 2:30, 2:30], x[..., 2:30, 2:30], atol=1e-6)
    assert make_grid(x, ncol=3).size == (3 * 34 + 2, 34 + 2)
