"""The private path: H, LoRA export through peft, the pipeline and its report."""

import json
import math

import pytest
import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from dphyper.config import BASE_UNET_DIR, ENCODER_PATH, EXAMPLES_DIR
from dphyper.diffusion import build_unet, load_unet
from dphyper.hypernet import HYPERNET_PATH, HyperNetwork, lora_shapes_of
from dphyper.lora import add_lora, lora_model_fn, save_lora

have_all = all(p.exists() for p in (BASE_UNET_DIR / "config.json", ENCODER_PATH, HYPERNET_PATH))
needs_models = pytest.mark.skipif(not have_all, reason="shipped checkpoints missing")


def _unet():
    torch.manual_seed(0)
    u = add_lora(build_unet())
    return u.requires_grad_(False).eval()


def test_untrained_hypernet_gives_the_base_model():
    unet = _unet()
    h = HyperNetwork(lora_shapes_of(unet))
    lora = h.generate(torch.randn(64), 0.1)
    assert set(lora) == set(lora_shapes_of(unet))
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 500])
    with torch.no_grad():
        base = unet(x, t).sample
        assert torch.allclose(lora_model_fn(unet, lora)(x, t), base)


def test_anchored_hypernet_maps_the_public_mean_to_the_base_model(tmp_path):
    from dphyper.hypernet import load_hypernet, save_hypernet

    unet = _unet()
    h = HyperNetwork(lora_shapes_of(unet))
    torch.nn.init.normal_(h.head.weight, std=0.05)
    torch.nn.init.normal_(h.head.bias, std=0.05)  # a non-zero "average LoRA", as training leaves it
    mu = torch.nn.functional.normalize(torch.randn(64), dim=0) * 0.12
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 500])
    with torch.no_grad():
        base = unet(x, t).sample
        assert not torch.allclose(lora_model_fn(unet, h.generate(mu, 0.05))(x, t), base, atol=1e-4)
        h.set_anchor(mu)
        for std in (0.0, 0.05, 3.0):  # at every noise level
            at_mu = h.generate(mu, std)
            assert max(v.abs().max().item() for k, v in at_mu.items() if ".lora_B." in k) < 1e-6
            assert torch.allclose(lora_model_fn(unet, at_mu)(x, t), base, atol=1e-5)
        other = mu + 0.3 * torch.randn(64)
        assert not torch.allclose(lora_model_fn(unet, h.generate(other, 0.05))(x, t), base, atol=1e-4)
        save_hypernet(h, tmp_path / "h.safetensors")
        h2 = load_hypernet(unet, tmp_path / "h.safetensors", device=torch.device("cpu"))
        assert torch.equal(h2.anchor, h.anchor)
        a, b = h.generate(other, 0.05), h2.generate(other, 0.05)
        assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="shape"):
        h.set_anchor(torch.zeros(3))
    with pytest.raises(ValueError, match="radius"):
        h.set_anchor(mu, radius=-1.0)


def test_local_anchor_reaches_only_means_near_the_public_mean(tmp_path):
    from dphyper.hypernet import load_hypernet, save_hypernet

    unet = _unet()
    h = HyperNetwork(lora_shapes_of(unet))
    torch.nn.init.normal_(h.head.weight, std=0.05)
    torch.nn.init.normal_(h.head.bias, std=0.05)
    mu = torch.nn.functional.normalize(torch.randn(64), dim=0) * 0.12
    far = mu + torch.nn.functional.normalize(torch.randn(64), dim=0) * 0.6
    with torch.no_grad():
        plain_far = h.generate(far, 0.0)
        h.set_anchor(mu, radius=0.1)
        b = lambda lora: torch.cat([v.flatten() for k, v in lora.items() if ".lora_B." in k])  # noqa: E731
        assert b(h.generate(mu, 0.0)).abs().max() < 1e-6  # at the anchor: the base model
        assert torch.allclose(b(h.generate(far, 0.0)), b(plain_far), atol=1e-5)  # 6 radii away: H unchanged
        # Weight exp(-excess / 2r^2), excess = |m - mu|^2 - d std^2: one radius out -> e^-0.5,
        # and a distance the noise level alone explains counts as none.
        step = torch.nn.functional.normalize(torch.randn(64), dim=0)
        w = h.anchor_weight(torch.stack([mu + 0.1 * step, mu + 0.8 * step]), torch.tensor([0.0, 0.1]))
        assert w[0].item() == pytest.approx(math.exp(-0.5), rel=1e-5) and w[1].item() == pytest.approx(1.0, rel=1e-4)
        save_hypernet(h, tmp_path / "h.safetensors")
        h2 = load_hypernet(unet, tmp_path / "h.safetensors", device=torch.device("cpu"))
        assert h2.anchor_radius == pytest.approx(0.1)


def test_generated_lora_is_differentiable_and_changes_output():
    unet = _unet()
    h = HyperNetwork(lora_shapes_of(unet))
    torch.nn.init.normal_(h.head.weight, std=0.05)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 500])
    lora = {k: v[0] for k, v in h(torch.randn(1, 64), torch.tensor([0.0])).items()}
    out = lora_model_fn(unet, lora)(x, t)
    with torch.no_grad():
        assert not torch.allclose(out, unet(x, t).sample, atol=1e-4)
    out.pow(2).mean().backward()
    assert h.head.weight.grad is not None and h.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in unet.parameters())  # the base stays frozen


def test_lora_file_round_trips_through_peft(tmp_path):
    unet = _unet()
    h = HyperNetwork(lora_shapes_of(unet))
    torch.nn.init.normal_(h.head.weight, std=0.05)
    lora = h.generate(torch.randn(64), 0.0)
    save_lora(lora, tmp_path / "lora.safetensors")
    keys = load_file(str(tmp_path / "lora.safetensors"))
    assert all(".default." not in k and ".lora_" in k for k in keys)
    fresh = _unet()  # same seed: same base weights
    set_peft_model_state_dict(fresh, keys)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.allclose(fresh(x, t).sample, lora_model_fn(unet, lora)(x, t), atol=1e-5)


@pytest.fixture(scope="module")
def pipe():
    from dphyper.methods.hypernet import HypernetPipeline

    return HypernetPipeline(device=torch.device("cpu"))


@needs_models
def test_shipped_hypernet_lora_changes_unet_and_depends_on_data(pipe):
    from dphyper.data import load_folder

    sneakers = load_folder(EXAMPLES_DIR / "sneakers").images
    trousers = load_folder(EXAMPLES_DIR / "trousers").images
    ra = pipe.run(sneakers, epsilon=math.inf, samples=0)
    rb = pipe.run(trousers, epsilon=math.inf, samples=0)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([50, 400])
    with torch.no_grad():
        base = pipe.unet(x, t).sample
        out_a = lora_model_fn(pipe.unet, ra.lora)(x, t)
        out_b = lora_model_fn(pipe.unet, rb.lora)(x, t)
    assert (out_a - base).abs().mean() > 1e-3
    assert (out_a - out_b).abs().mean() > 1e-3
    assert ra.report["noise_multiplier"] == 0 and ra.report["private"] is False


@needs_models
def test_shipped_hypernet_leaves_a_public_like_mix_near_the_base_model(pipe):
    # A uniform mix of all classes looks like the public data the base model was trained on:
    # the anchored H must adapt it far less than a single-class set (mixed-1000 regression).
    from dphyper.data import load_folder

    def b_norm(folder: str) -> float:
        lora = pipe.run(load_folder(EXAMPLES_DIR / folder).images, epsilon=math.inf, samples=0).lora
        return sum(v.pow(2).sum() for k, v in lora.items() if ".lora_B." in k).sqrt().item()

    assert pipe.hyper.anchor is not None
    mixed, sneakers = b_norm("mixed"), b_norm("sneakers")
    assert mixed < 0.5 * sneakers, (mixed, sneakers)


@needs_models
def test_report_has_no_private_values(tmp_path, pipe):
    from dphyper.__main__ import main

    src = EXAMPLES_DIR / "bags"
    private = tmp_path / "private"
    private.mkdir()
    files = sorted(src.glob("*.png"))[:57]
    for i, f in enumerate(files):
        (private / f"CANARY_alice_{i}.png").write_bytes(f.read_bytes())
    out = tmp_path / "out"
    assert main(["generate", "--images", str(private), "--epsilon", "1", "--samples", "4", "--seed", "3",
                 "--out", str(out)]) == 0
    report_text = (out / "report.json").read_text()
    report = json.loads(report_text)
    assert "CANARY" not in report_text and "alice" not in report_text
    assert report["method"] == "hypernet" and report["epsilon"] == 1.0 and report["delta"] == 1e-5
    assert report["noise_multiplier"] == pytest.approx(3.7306, abs=1e-3)
    assert report["sensitivity"] == pytest.approx(math.sqrt(2))
    assert report["noisy_count"] != 57  # noise is on
    # Timings grow with the true n (embedding) and with every file read (rejected ones too): not DP outputs.
    assert not any("second" in k or "time" in k for k in report), sorted(report)
    assert isinstance(report["sampling_seed"], int)
    assert len(list((out / "samples").glob("*.png"))) == 4 and (out / "grid.png").exists()
    # the LoRA file loads with peft into the shipped UNet
    unet = add_lora(load_unet(device=torch.device("cpu")))
    set_peft_model_state_dict(unet, load_file(str(out / "lora.safetensors")))
    for name, p in unet.named_parameters():
        if ".lora_B." in name:
            assert p.abs().sum() > 0
            break


@needs_models
def test_seed_fixes_sampling_not_privacy(pipe):
    x = torch.zeros(64, 1, 32, 32) - 1
    x[:, :, 8:24, 8:24] = 1
    a = pipe.run(x, epsilon=1.0, samples=2, steps=5, seed=7)
    b = pipe.run(x, epsilon=1.0, samples=2, steps=5, seed=7)
    assert not torch.equal(a.release.mean, b.release.mean)  # privacy noise differs
    c = pipe.run(x, epsilon=math.inf, samples=2, steps=5, seed=7)
    d = pipe.run(x, epsilon=math.inf, samples=2, steps=5, seed=7)
    assert torch.equal(c.samples, d.samples)  # same LoRA + same seed: same samples


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@needs_models
def test_private_path_on_cuda():
    from dphyper.data import load_folder
    from dphyper.methods.hypernet import HypernetPipeline

    cuda = HypernetPipeline(device=torch.device("cuda"))
    r = cuda.run(load_folder(EXAMPLES_DIR / "sneakers").images, epsilon=1.0, samples=8, steps=10, seed=0)
    assert r.samples.shape == (8, 1, 32, 32) and torch.isfinite(r.samples).all()
    assert next(iter(r.lora.values())).device.type == "cuda"


@needs_models
def test_hypernet_training_runs_resumes_and_moves_the_lora(tmp_path):
    from dphyper.hypernet import load_hypernet
    from dphyper.train_hypernet import HypernetTrainConfig, train_hypernet

    from dphyper.privacy import clipped_mean

    # The shipped H was made this way: a first phase without the anchor, resumed with it.
    cfg = HypernetTrainConfig(out=tmp_path / "h.safetensors", work_dir=tmp_path / "work", max_steps=3,
                              sets_per_step=2, images_per_set=4, n_max=200, limit_images=1000, save_every=2,
                              anchor=False)
    assert train_hypernet(cfg)["steps"] == 3
    unet = add_lora(build_unet())
    assert load_hypernet(unet, tmp_path / "h.safetensors", device=torch.device("cpu")).anchor is None
    cfg.max_steps, cfg.anchor = 5, True
    summary = train_hypernet(cfg)
    assert summary["steps"] == 5 and summary["anchor_from_step"] == 3  # resumed, not restarted
    assert (tmp_path / "h.safetensors").stat().st_size < 10 * 2**20
    h = load_hypernet(unet, tmp_path / "h.safetensors", device=torch.device("cpu"))
    assert h.head.weight.abs().sum() > 0  # training moved the zero-initialised head
    emb = torch.load(tmp_path / "work" / "public_embeddings.pt", weights_only=False)["emb"]
    assert torch.allclose(h.anchor, clipped_mean(emb)) and h.anchor_radius == cfg.anchor_radius
    cfg.max_steps, cfg.anchor = 6, False  # an anchored state does not silently drop its anchor
    with pytest.raises(RuntimeError, match="does not match"):
        train_hypernet(cfg)


@needs_models
def test_lora_scale_multiplies_the_up_projections_only():
    """``lora_scale`` (a public setting applied after the release) scales B, leaves A, and 0 is the base model;
    bad values are refused before anything is released."""
    from dphyper.methods import get_method
    from dphyper.methods.base import run_method
    from dphyper.models import shared_models

    m = get_method("hypernet")
    x = torch.rand(24, 1, 32, 32) * 2 - 1
    one = run_method(m, x, m.config_cls(epsilon=math.inf, samples=0, lora_scale=1.0), shared_models()).adapter
    two = run_method(m, x, m.config_cls(epsilon=math.inf, samples=0, lora_scale=2.0), shared_models()).adapter
    for k in one:
        torch.testing.assert_close(two[k], one[k] * (2.0 if ".lora_B." in k else 1.0))
    assert any(v.abs().sum() > 0 for k, v in one.items() if ".lora_B." in k)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="lora_scale"):
            m.config_cls(epsilon=1.0, lora_scale=bad)


def test_signal_share_is_one_without_noise_and_zero_when_noise_explains_the_distance():
    """The scale follows the release's signal share (post-processing: the release and public constants only)."""
    from dphyper.methods.hypernet import signal_share

    a = torch.zeros(64)
    m = torch.full((64,), 0.1)  # ||m - a||^2 = 0.64
    assert signal_share(m, 0.0, a) == 1.0
    assert signal_share(m, 0.1, a) == pytest.approx(0.0, abs=1e-6)  # d s^2 = 0.64: all of it could be noise
    assert signal_share(m, 0.2, a) == 0.0  # more noise than distance
    assert signal_share(m, 0.05, a) == pytest.approx(0.75)
    assert signal_share(a, 0.0, a) == 0.0 and signal_share(m, math.inf, a) == 0.0
    assert signal_share(m, 0.0, None) == 1.0


def test_checkpoint_average_means_every_tensor_but_the_kept_ones(tmp_path):
    """scripts/hypernet_average.py (how the shipped H was made): the mean of each tensor over the
    snapshots, the first snapshot's tensors for a kept prefix, and a clear error for snapshots that do
    not belong together."""
    import importlib.util

    from safetensors.torch import save_file

    from dphyper.config import REPO_DIR

    spec = importlib.util.spec_from_file_location("hypernet_average", REPO_DIR / "scripts" / "hypernet_average.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    anchor = torch.randn(4)
    paths = []
    for i in range(3):
        p = tmp_path / f"h{i}.safetensors"
        save_file({"anchor": anchor, "head.weight": torch.full((2, 3), float(i)), "lora_a.0": torch.full((2,), 10.0 + i)},
                  str(p), metadata={"embed_dim": "4", "hidden": "3", "anchor_radius": "0.1"})
        paths.append(p)
    out, meta = mod.average(paths)
    assert torch.equal(out["head.weight"], torch.full((2, 3), 1.0)) and torch.equal(out["lora_a.0"], torch.full((2,), 11.0))
    kept, meta = mod.average(paths, keep=("lora_a",))
    assert torch.equal(kept["lora_a.0"], torch.full((2,), 10.0)) and torch.equal(kept["head.weight"], out["head.weight"])
    assert meta["kept_from_first"] == "lora_a" and meta["anchor_radius"] == "0.1"
    bad = tmp_path / "bad.safetensors"
    save_file({"anchor": anchor + 1, "head.weight": torch.zeros(2, 3), "lora_a.0": torch.zeros(2)}, str(bad),
              metadata={"embed_dim": "4", "hidden": "3", "anchor_radius": "0.1"})
    with pytest.raises(ValueError, match="anchors"):
        mod.average([paths[0], bad])
    with pytest.raises(ValueError, match="at least two"):
        mod.average(paths[:1])


def test_min_snr_weight_keeps_the_noisy_steps_and_scales_the_clean_ones_down():
    from dphyper.diffusion import make_train_scheduler
    from dphyper.train_hypernet import min_snr_weight

    a = make_train_scheduler().alphas_cumprod
    snr = a / (1 - a)
    w = min_snr_weight(a, 1.0)
    assert torch.equal(min_snr_weight(a, 0.0), torch.ones_like(a))  # off: the plain loss
    assert torch.all(w[snr <= 1] == 1) and (snr <= 1).any()
    assert torch.allclose(w[snr > 1], 1 / snr[snr > 1]) and (snr > 1).any()
    assert torch.all(w[1:] >= w[:-1])  # never more weight on a cleaner step


def test_one_class_public_sets_are_pure_and_off_by_default_change_no_draw():
    from dphyper.train_hypernet import HypernetTrainConfig, PublicSetSampler

    emb = torch.nn.functional.normalize(torch.randn(600, 8), dim=1)
    labels = torch.arange(600) % 10
    plain = PublicSetSampler(emb, HypernetTrainConfig(), torch.Generator().manual_seed(0))
    with_labels = PublicSetSampler(emb, HypernetTrainConfig(), torch.Generator().manual_seed(0), labels)
    assert all(torch.equal(plain.draw(), with_labels.draw()) for _ in range(30))  # the shipped draws, replayable
    pure = PublicSetSampler(emb, HypernetTrainConfig(p_class_sets=1.0), torch.Generator().manual_seed(0), labels)
    sets = [pure.draw() for _ in range(30)]
    assert all(len(torch.unique(labels[s])) == 1 and len(torch.unique(s)) == len(s) for s in sets)
    assert len({int(labels[s[0]]) for s in sets}) > 3  # the class is drawn, not fixed


@needs_models
def test_freeze_a_keeps_the_shared_down_projections(tmp_path):
    from safetensors.torch import load_file

    from dphyper.train_hypernet import HypernetTrainConfig, train_hypernet

    cfg = HypernetTrainConfig(out=tmp_path / "h1.safetensors", work_dir=tmp_path / "work", max_steps=1, sets_per_step=2,
                              images_per_set=2, n_max=100, limit_images=300, freeze_a=True, warmup_steps=1)
    train_hypernet(cfg)
    cfg.out, cfg.max_steps = tmp_path / "h2.safetensors", 2
    train_hypernet(cfg)  # resumed: one more step
    h1, h2 = load_file(str(tmp_path / "h1.safetensors")), load_file(str(tmp_path / "h2.safetensors"))
    a_keys = [k for k in h1 if k.startswith("lora_a.")]
    assert a_keys and all(torch.equal(h1[k], h2[k]) for k in a_keys)  # A stayed where it was
    assert any(not torch.equal(h1[k], h2[k]) for k in h1 if k.startswith("head."))  # the step moved the head


def test_depth_and_width_are_saved_and_loaded_and_depth_one_keeps_the_shipped_layout(tmp_path):
    """The ablation's H sizes (issue 41): a deeper, wider H round-trips through its file; depth 1 is today's H,
    whose parameter names the shipped checkpoint uses."""
    from dphyper.hypernet import load_hypernet, save_hypernet

    unet = _unet()
    shapes = lora_shapes_of(unet)
    assert [k for k in HyperNetwork(shapes).state_dict() if k.startswith("trunk")] == [
        "trunk.0.weight", "trunk.0.bias", "trunk.2.weight", "trunk.2.bias", "trunk.3.weight", "trunk.3.bias"]
    h = HyperNetwork(shapes, hidden=32, depth=3)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in h.trunk) == 3
    torch.nn.init.normal_(h.head.weight, std=0.05)
    save_hypernet(h, tmp_path / "h.safetensors")
    h2 = load_hypernet(unet, tmp_path / "h.safetensors", device=torch.device("cpu"))
    assert (h2.depth, h2.head.in_features) == (3, 32)
    mean = torch.randn(64)
    a, b = h.generate(mean, 0.1), h2.generate(mean, 0.1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="depth"):
        HyperNetwork(shapes, depth=0)
