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
@pytest.mark.slow  # 41 s: a check of the shipped evaluator, not of anything a run changes
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
@pytest.mark.slow  # 33 s: a check of the shipped base model
def test_base_samples_cover_many_classes():
    from dphyper.diffusion import load_unet, sample
    from dphyper.evaluator import class_histogram

    hist = class_histogram(sample(load_unet(), 64, steps=20, seed=0))
    assert sum(v > 0 for v in hist.values()) >= 6, hist
    assert max(hist.values()) <= 32, hist


@needs_fmnist
def test_shipped_public_map_is_what_its_command_builds():
    """assets/public_map: made by `train public-map` with the shipped encoder (a rebuild matches)."""
    import torch

    from dphyper.public_map import compute, load

    shipped, rebuilt = load(), compute()
    assert shipped["points"].shape == (1000, 2) and shipped["labels"].unique().numel() == 10
    assert torch.equal(shipped["labels"], rebuilt["labels"])
    assert torch.allclose(shipped["points"], rebuilt["points"], atol=1e-3)
    assert torch.allclose(shipped["axes"], rebuilt["axes"], atol=1e-6)


def test_app_warms_up_without_the_dataset(tmp_path):
    """A Space may lack the Debian dataset: the app's start (models, noise-view map, the flagship's warm-up pass on
    a bundled example) must not need it. The warm-up ends by freezing the start-up objects out of the collector's
    sight (each run's gc.collect() then scans only what the run made; issue 39)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "DPHYPER_FASHION_MNIST": str(tmp_path), "DPHYPER_TEMP_DIR": str(tmp_path / "tmp")}
    code = ("import dphyper.app as a; a.prepare_temp_dir(); a.warm_up(); a.build_demo(); "
            "print('points', len(a._public_map()['points'])); import gc; print('frozen', gc.get_freeze_count())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "points 1000" in out.stdout
    assert int(out.stdout.split("frozen ")[1].split()[0]) > 100_000


def test_class_agreement_scores_a_class_set_by_share_and_a_mix_by_closeness_to_uniform():
    """The one definition behind `bench --suite hypernet` and scripts/hypernet_select.py."""
    import torch

    from dphyper.evaluator import class_agreement

    pred = torch.tensor([7, 7, 7, 5])
    assert class_agreement(pred, (7,)) == 0.75 and class_agreement(pred, (5, 7)) == 1.0
    uniform = torch.arange(10).repeat(3)
    assert class_agreement(uniform, tuple(range(10))) == pytest.approx(1.0)
    assert class_agreement(torch.zeros(20, dtype=torch.long), tuple(range(10))) == pytest.approx(0.1)


@needs_fmnist
def test_encoder_training_resumes_to_the_same_weights_as_one_run(tmp_path):
    """`train encoder` in chunks (a stop, then the same command again) ends with exactly the weights of an
    uninterrupted run, and a state from other settings is refused instead of mixed in."""
    from safetensors.torch import load_file

    from dphyper.encoder import EncoderTrainConfig, train_encoder

    small = dict(epochs=2, batch_size=16, limit_images=48, save_every=2, eval_images=64)
    one = train_encoder(EncoderTrainConfig(out=tmp_path / "a" / "enc.safetensors", **small))
    assert one["done"] and len(one["loss_history"]) == 2
    part = train_encoder(EncoderTrainConfig(out=tmp_path / "b" / "enc.safetensors", chunk_steps=4, **small))
    assert not part["done"] and (part["epoch"], part["step"]) == (1, 1)
    assert not (tmp_path / "b" / "enc.safetensors").exists()
    with pytest.raises(ValueError, match="other settings"):
        train_encoder(EncoderTrainConfig(out=tmp_path / "b" / "enc.safetensors", **{**small, "lr": 3e-4}))
    rest = train_encoder(EncoderTrainConfig(out=tmp_path / "b" / "enc.safetensors", **small))
    assert rest["done"] and rest["loss_history"] == one["loss_history"]
    a, b = load_file(str(tmp_path / "a" / "enc.safetensors")), load_file(str(tmp_path / "b" / "enc.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "b" / "enc.train.pt").exists()  # a finished run leaves no state to be reused
