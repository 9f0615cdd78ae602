"""The shipped public models: evaluator accuracy, FID sanity, encoder geometry, base quality."""

import pytest
import torch

from dphyper.config import BASE_UNET_DIR, ENCODER_PATH, EVALUATOR_PATH

from .conftest import needs_fmnist

needs_eval = pytest.mark.skipif(not EVALUATOR_PATH.exists(), reason="no shipped evaluator")
needs_enc = pytest.mark.skipif(not ENCODER_PATH.exists(), reason="no shipped encoder")


@needs_fmnist
@needs_eval
def test_evaluator_accuracy(fmnist_test):
    from dphyper.evaluator import classify, load_evaluator

    x, y = fmnist_test
    acc = (classify(x[:3000], load_evaluator()) == y[:3000]).float().mean().item()
    assert acc >= 0.90, acc


@needs_fmnist
@needs_eval
def test_fid_sanity(fmnist_test):
    """real-vs-real small, real-vs-blurred in between, real-vs-noise large."""
    import torchvision.transforms.functional as TF

    from dphyper.evaluator import fid_kid

    x, _ = fmnist_test
    a, b = x[:1000], x[1000:2000]
    same = fid_kid(a, b)["fid"]
    blurred = fid_kid(TF.gaussian_blur(a, kernel_size=5, sigma=1.5), b)["fid"]
    noise = fid_kid(torch.rand(1000, 1, 32, 32) * 2 - 1, b)["fid"]
    assert same < blurred < noise, (same, blurred, noise)
    assert same < 0.1 * noise


@needs_fmnist
@needs_enc
def test_encoder_is_normalised_and_separates_classes(fmnist_test):
    from dphyper.encoder import embed, load_encoder

    x, y = fmnist_test
    e = embed(x[:2000], load_encoder())
    y = y[:2000]
    assert e.shape == (2000, 64)
    assert torch.allclose(e.norm(dim=1), torch.ones(2000), atol=1e-4)
    means = torch.stack([e[y == c].mean(0) for c in range(10)])
    within = torch.stack([(e[y == c] @ means[c]).mean() for c in range(10)])
    between = (means @ means.T)[~torch.eye(10, dtype=bool)]
    assert within.mean() > between.mean() + 0.2


@needs_eval
@pytest.mark.skipif(not (BASE_UNET_DIR / "config.json").exists(), reason="no shipped base UNet")
def test_base_samples_cover_many_classes():
    from dphyper.diffusion import load_unet, sample
    from dphyper.evaluator import class_histogram

    hist = class_histogram(sample(load_unet(), 64, steps=20, seed=0))
    assert sum(v > 0 for v in hist.values()) >= 6, hist
    assert max(hist.values()) <= 32, hist
