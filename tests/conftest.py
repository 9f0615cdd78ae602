import os

import pytest

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
