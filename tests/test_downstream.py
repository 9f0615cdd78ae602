"""Issue 34: DPImageBench's utility measure (train on synthetic, test on real), as a user runs it."""

from __future__ import annotations

import json

import pytest
import torch

from .conftest import needs_fmnist


@needs_fmnist
def test_the_task_is_ten_disjoint_private_folders_and_a_test_set_of_everything_else():
    from dphyper.data import load_fashion_mnist
    from dphyper.downstream import build_task

    task = build_task(20)
    x, y = load_fashion_mnist("test")
    assert len(task.folders) == 10 and all(len(f) == 20 for f in task.folders)
    assert len(task.test_x) == len(x) - 200 and len(task.test_y) == len(task.test_x)
    flat = {tuple(v.flatten()[::7].tolist()) for f in task.folders for v in f}  # no folder image in the test set
    assert not flat & {tuple(v.flatten()[::7].tolist()) for v in task.test_x[:2000]}
    for c, f in enumerate(task.folders):  # each folder holds its class only (labels of the pixels' source)
        idx = [int(torch.nonzero((x == img).flatten(1).all(1)).flatten()[0]) for img in f[:5]]
        assert all(int(y[i]) == c for i in idx)
    assert torch.equal(build_task(20).folders[3], task.folders[3])  # public, fixed selection
    with pytest.raises(ValueError, match="n per class"):
        build_task(1000)


def test_the_classifier_learns_what_its_labels_say_and_nothing_from_shuffled_ones():
    from dphyper.downstream import accuracy, labelled_union, train_classifier

    g = torch.Generator().manual_seed(0)

    def images(c: int, k: int) -> torch.Tensor:  # class c: its own grey level (flips and shifts keep it)
        return (-0.9 + 0.2 * c + 0.03 * torch.randn(k, 1, 32, 32, generator=g)).clamp(-1, 1)

    train = [images(c, 24) for c in range(10)]
    x, y = labelled_union(train)
    test_x, test_y = labelled_union([images(c, 20) for c in range(10)])
    good = accuracy(train_classifier(x, y, seed=0, epochs=20), test_x, test_y)
    shuffled = accuracy(train_classifier(x, y[torch.randperm(len(y), generator=g)], seed=0, epochs=20), test_x, test_y)
    assert good["accuracy"] > 0.9 and good["low"] < good["accuracy"] <= good["high"]
    assert shuffled["accuracy"] < 0.4 and len(good["per_class"]) == 10


def test_the_report_prints_intervals_and_leaves_stale_cells_out(monkeypatch, tmp_path):
    from dphyper.bench import downstream_suite as ds
    from dphyper.compare import method_id

    def cell(method, eps, rep, acc, mid=None):
        return {"method": method, "epsilon": eps, "n": 100, "samples": 100, "repeat": rep,
                "method_id": mid or ("real" if method == "real" else method_id(method, None, 100)),
                "accuracy": acc, "low": acc - 0.01, "high": acc + 0.01, "seconds_methods": 10.0}

    res = {"cells": {"a": cell("real", 1.0, 0, 0.80), "b": cell("hypernet", 1.0, 0, 0.55),
                     "c": cell("hypernet", 1.0, 1, 0.57), "d": cell("dpsgd", 1.0, 0, 0.30, mid="old"),
                     "e": cell("qem", 8.0, 0, 0.41)}}
    text = ds.report(res)
    assert "real (no privacy) | 80.0 % [79.0, 81.0] | 80.0 % [79.0, 81.0]" in text
    assert "| Hypernetwork | 56.0 ± 12.7 % (2 runs) |  |" in text  # t(0.975, 1) * sd / sqrt 2 = 12.7
    assert "Quadratic EM |  | 41.0 % [40.0, 42.0]" in text
    assert "1 stored cells were run with defaults" in text and "DP-SGD" in text.split("Not run yet:")[1]
    doc = tmp_path / "B.md"
    monkeypatch.setattr(ds, "PATH", tmp_path / "downstream.json")
    (tmp_path / "downstream.json").write_text(json.dumps(res))

    class Cfg:
        report_only, methods, epsilons, repeats, steps = True, "", "", 1, 25

    Cfg.doc = doc
    out = ds.bench_downstream(Cfg)
    assert out["stored"] == 5 and "<!-- downstream:start -->" in doc.read_text()
