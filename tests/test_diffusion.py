import pytest
import torch

from dphyper.config import BASE_UNET_DIR
from dphyper.diffusion import BaseTrainConfig, build_unet, load_unet, sample, train_base

from .conftest import toy_squares

needs_base = pytest.mark.skipif(not (BASE_UNET_DIR / "config.json").exists(), reason="no shipped base UNet")


def _toy_images(n=256):
    return toy_squares(n, 4, 20)


@pytest.mark.slow  # 54 s on 2 cores; base training, which no user runs
def test_tiny_training_lowers_loss(tmp_path):
    cfg = BaseTrainConfig(out=tmp_path / "out", work_dir=tmp_path / "work", max_steps=80, batch_size=16,
                          block_out_channels=(16, 16, 16), lr=2e-3, warmup_steps=5, save_every=40,
                          log_every=10)
    train_base(cfg, images=_toy_images())
    state = torch.load(tmp_path / "work" / "state.pt", weights_only=False)
    hist = [loss for _, loss in state["history"]]
    assert hist[-1] < 0.6 * hist[0], hist
    # resumable: a second call continues from step 80
    cfg.max_steps = 100
    summary = train_base(cfg, images=_toy_images())
    assert summary["steps"] == 100
    assert (tmp_path / "out" / "config.json").exists()


def test_unet_config_is_what_we_ship():
    u = build_unet()
    assert 0.5e6 < sum(p.numel() for p in u.parameters()) < 2.5e6  # < 10 MB in float32


@needs_base
def test_shipped_base_unet_samples():
    unet = load_unet()
    assert (BASE_UNET_DIR / "diffusion_pytorch_model.safetensors").stat().st_size < 10 * 2**20
    a = sample(unet, 4, steps=10, seed=1)
    b = sample(unet, 4, steps=10, seed=1)
    c = sample(unet, 4, steps=10, seed=2)
    assert a.shape == (4, 1, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    # garments on a dark background: the padding border is (nearly) background
    border = torch.cat([a[..., :2, :].flatten(), a[..., -2:, :].flatten()])
    assert border.mean() < -0.8


@needs_base
def test_every_sampler_gives_garments_and_is_a_function_of_the_seed():
    """Issue 39: DPM-Solver++ and UniPC (10 steps) sample what DDIM samples: images in [-1, 1] on a dark background,
    the same for the same seed, and not DDIM's images (the option reaches the scheduler). (Pixel-wise convergence to
    DDIM is no test here: with the x0 clip this base model needs, DDIM itself moves by 0.14 per pixel between 50 and
    200 steps; ``bench --suite sampling`` compares the samplers' distributions, paired, by FID and KID.)"""
    from dphyper.diffusion import SAMPLERS

    unet = load_unet()
    ddim = sample(unet, 4, steps=10, seed=3)
    for name in ("dpm", "unipc"):
        x = sample(unet, 4, steps=10, seed=3, sampler=name)
        assert x.min() >= -1 and x.max() <= 1
        assert torch.equal(x, sample(unet, 4, steps=10, seed=3, sampler=name))
        assert not torch.equal(x, ddim)
        border = torch.cat([x[..., :2, :].flatten(), x[..., -2:, :].flatten()])
        assert border.mean() < -0.8, name
    # bfloat16 autocast of the UNet: the same kind of images, not bit-equal to float32's.
    half = sample(unet, 4, steps=10, seed=3, bf16=True)
    assert half.dtype == torch.float32 and half.min() >= -1 and half.max() <= 1
    assert not torch.equal(half, ddim) and (half - ddim).abs().mean() < 0.1
    assert set(SAMPLERS) == {"ddim", "dpm", "unipc"}
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(unet, 1, steps=2, seed=0, sampler="euler")
