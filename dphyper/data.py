"""Public data (Fashion-MNIST from Debian) and the image-folder loader for private data.

Every image, public or private, ends up as a 1x32x32 float tensor in [-1, 1]: the garment
fitted into 28x28 and padded with background (-1) to 32x32, white garment on black, like
Fashion-MNIST itself.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import CONTENT_SIZE, IMAGE_SIZE

FASHION_MNIST_DIR = Path(os.environ.get("DPHYPER_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
APT_HINT = "install it with: sudo apt-get install dataset-fashion-mnist"
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# Limits for untrusted folders. A decompression bomb is refused from its header, before
# any pixel is decoded.
MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}


class DataError(ValueError):
    """Input data that dphyper cannot use; the message is meant for the user."""


# ---------------------------------------------------------------- Fashion-MNIST (public)

def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        return np.frombuffer(fh.read(), dtype=np.uint8, offset=offset)


def load_fashion_mnist_uint8(split: str = "train", root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw Fashion-MNIST: images (N, 28, 28) uint8 and labels (N,) int64."""
    root = Path(root or FASHION_MNIST_DIR)
    prefix = {"train": "train", "test": "t10k"}[split]
    img_path = root / f"{prefix}-images-idx3-ubyte.gz"
    lbl_path = root / f"{prefix}-labels-idx1-ubyte.gz"
    if not img_path.exists() or not lbl_path.exists():
        raise DataError(f"Fashion-MNIST {split} split not found in {root} ({APT_HINT}).")
    images = _read_idx(img_path, 16).reshape(-1, 28, 28)
    labels = _read_idx(lbl_path, 8).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"Fashion-MNIST files in {root} are inconsistent: {len(images)} images, {len(labels)} labels.")
    return images, labels


def uint8_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 1, 32, 32) float in [-1, 1], padded with -1."""
    x = torch.from_numpy(np.array(images)).float().div(127.5).sub(1.0).unsqueeze(1)
    pad = (IMAGE_SIZE - x.shape[-1]) // 2
    return torch.nn.functional.pad(x, (pad, pad, pad, pad), value=-1.0)


def load_fashion_mnist(split: str = "train", root: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as (N, 1, 32, 32) tensors in [-1, 1] and (N,) labels."""
    images, labels = load_fashion_mnist_uint8(split, root)
    return uint8_to_tensor(images), torch.from_numpy(labels)


# ---------------------------------------------------------------- image folders (private)

@dataclass
class FolderLoad:
    """Result of loading a folder: the images and, per rejected file, the reason."""

    images: torch.Tensor  # (N, 1, 32, 32) in [-1, 1]
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)

    @property
    def n(self) -> int:
        return int(self.images.shape[0])


def _to_gray_float(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> float32 array in [0, 1], transparent areas become background."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return np.clip(arr / top, 0, 1).astype(np.float32)
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        return np.clip(arr / max(float(arr.max()), 1e-8), 0, 1)
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))  # background is black
        im = Image.alpha_composite(background, rgba)
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """A decoded PIL image -> (1, 32, 32) in [-1, 1], fitted into 28x28 and padded."""
    im = ImageOps.exif_transpose(im)
    gray = Image.fromarray((_to_gray_float(im) * 255.0).round().astype(np.uint8), mode="L")
    gray = ImageOps.contain(gray, (CONTENT_SIZE, CONTENT_SIZE), Image.Resampling.LANCZOS)
    canvas = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    canvas.paste(gray, ((IMAGE_SIZE - gray.width) // 2, (IMAGE_SIZE - gray.height) // 2))
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32)).div(127.5).sub(1.0).unsqueeze(0)


def load_image_file(path: Path) -> torch.Tensor:
    """Decode one untrusted file; raise DataError with a reason naming the file."""
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{name}: cannot read file ({exc.strerror or exc}).") from None
    if size == 0:
        raise DataError(f"{name}: empty file.")
    if size > MAX_FILE_BYTES:
        raise DataError(f"{name}: file is {size / 2**20:.1f} MB, over the {MAX_FILE_BYTES // 2**20} MB limit.")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise DataError(f"{name}: {w}x{h} pixels is over the {MAX_IMAGE_PIXELS:,} pixel limit.")
            if w < 1 or h < 1:
                raise DataError(f"{name}: image has no pixels.")
            im.seek(0)  # animated images: the first frame
            im.load()
            return pil_to_tensor(im)
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{name}: not an image file (or a format Pillow cannot decode).") from None
    except Image.DecompressionBombError:
        raise DataError(f"{name}: image is over the {MAX_IMAGE_PIXELS:,} pixel limit (decompression bomb?).") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(f"{name}: corrupt or truncated image ({type(exc).__name__}).") from None


def list_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"Folder not found: {folder}")
    if not folder.is_dir():
        raise DataError(f"Not a folder: {folder}")
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def load_images(paths: list[Path], max_images: int | None = None) -> FolderLoad:
    """Load a list of untrusted files; unusable ones are listed with a reason."""
    images, rejected = [], []
    for p in paths:
        if max_images is not None and len(images) >= max_images:
            rejected.append((Path(p).name, f"over the limit of {max_images} images"))
            continue
        try:
            images.append(load_image_file(Path(p)))
        except DataError as exc:
            rejected.append((Path(p).name, str(exc).split(": ", 1)[-1]))
    if not images:
        detail = "; ".join(f"{n}: {r}" for n, r in rejected[:5])
        raise DataError("No usable image found" + (f" ({detail})" if detail else " (the folder is empty)") + ".")
    return FolderLoad(torch.stack(images), rejected)


def load_folder(folder: Path, max_images: int | None = None) -> FolderLoad:
    """All decodable images under ``folder`` (recursively), as the profile's tensors."""
    return load_images(list_files(folder), max_images=max_images)


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) in [-1, 1] -> (N, H, W) uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).squeeze(1).cpu().numpy()


def save_pngs(x: torch.Tensor, out_dir: Path, prefix: str = "sample") -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(to_uint8_images(x)):
        p = out_dir / f"{prefix}_{i:05d}.png"
        Image.fromarray(arr, mode="L").save(p)
        paths.append(p)
    return paths


def make_grid(x: torch.Tensor, ncol: int | None = None, pad: int = 2) -> Image.Image:
    """A grid PNG of (N, 1, H, W) images in [-1, 1]."""
    arrs = to_uint8_images(x)
    n = len(arrs)
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    h, w = arrs.shape[1:]
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad), 40, dtype=np.uint8)
    for i, a in enumerate(arrs):
        r, c = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = a
    return Image.fromarray(grid, mode="L")
