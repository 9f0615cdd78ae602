import os

import pytest

# Under pytest-xdist (pytest.ini: -n auto) the workers share the machine's cores: give each its share
# of torch threads, and the same to the subprocesses tests start, instead of every worker taking all.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

os.environ.setdefault("DPHYPER_DEVICE", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from dphyper.config import ASSETS_DIR  # noqa: E402
from dphyper.data import FASHION_MNIST_DIR  # noqa: E402

HAVE_FMNIST = (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists()
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="session")
def fmnist_test():
    from dphyper.data import load_fashion_mnist

    return load_fashion_mnist("test")


def toy_squares(n: int = 64, lo: int = 4, hi: int = 20, seed: int = 0):
    """Bright 8x8 squares at random places on a dark 32x32 background: learnable in a few steps."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = -torch.ones(n, 1, 32, 32)
    for i in range(n):
        a, b = torch.randint(lo, hi, (2,), generator=g).tolist()
        x[i, 0, a:a + 8, b:b + 8] = 1.0
    return x
