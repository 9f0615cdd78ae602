"""The command line as a user runs it: every registered method through `python -m dphyper run`, every
command line the README shows, in fresh processes, with a progress bar on."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dphyper.config import EXAMPLES_DIR
from dphyper.methods import ADAPTER_FILES, METHODS

from .test_hypernet import needs_models

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "DPHYPER_DEVICE": "cpu", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def cli(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dphyper", *args], capture_output=True, text=True, cwd=cwd, env=ENV,
                          timeout=timeout)


def as_options(overrides: dict) -> list[str]:
    """A config-override dict as the CLI's options (the same names as the config fields)."""
    out: list[str] = []
    for k, v in overrides.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            out.append(flag if v else "--no-" + k.replace("_", "-"))
        else:
            out += [flag, str(v)]
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    for f in sorted((EXAMPLES_DIR / "bags").glob("*.png"))[:6]:
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


@needs_models
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_runs_from_the_command_line(name, tiny, tmp_path):
    """`python -m dphyper run METHOD` on a few images at the method's smallest budget, progress bar on: exit 0, the
    common layout, a report, an adapter that loads back and changes the model. (Failed for 4 of 6 methods before
    issue 40: a tqdm bar without a total refuses bool().)"""
    method = METHODS[name]
    out = tmp_path / "out"
    run = cli("run", name, "--images", str(tiny), "--epsilon", "1", "--samples", "2", "--steps", "2", "--seed", "1",
              "--out", str(out), *as_options(method.smallest))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "Optimal order" not in run.stderr
    report = json.loads(run.stdout)
    assert report == json.loads((out / "report.json").read_text())
    assert report["method"] == name and report["samples"] == 2 and report["epsilon"] == 1.0
    adapter = ADAPTER_FILES[method.adapter_format]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted([adapter, "grid.png", "report.json", "samples/sample_00000.png", "samples/sample_00001.png"])
    # The stage seconds add up to the total they print.
    line = [ln for ln in run.stderr.splitlines() if ln.startswith("seconds per stage")][-1]
    secs = dict((k, float(v)) for k, v in re.findall(r"(\w[\w ]*?) (\d+\.\d+)", line.split(":", 1)[1]))
    assert abs(sum(v for k, v in secs.items() if k != "total") - secs["total"]) < 0.05 * len(secs), line
    if not method.one_shot:  # a training method shows a bar with its total
        assert re.search(r"\d+/\d+", run.stderr), run.stderr[-2000:]
    from dphyper.adapters import FORMATS
    from dphyper.diffusion import load_unet
    from dphyper.methods import load_adapter_into

    if FORMATS[method.adapter_format].draw is not None:  # an image set (Private Evolution): the samples are its
        from PIL import Image  # images, and it is refused as weights with the way to read it
        from safetensors.torch import load_file

        kept = load_file(str(out / adapter))["images"]
        png = torch.tensor(list(Image.open(out / "samples" / "sample_00000.png").convert("L").getdata()),
                           dtype=torch.float32).reshape(32, 32)
        assert min(float((((k[0] + 1) * 127.5).round() - png).abs().max()) for k in kept) <= 1.0
        with pytest.raises(ValueError, match="load_file"):
            load_adapter_into(load_unet(device=torch.device("cpu")), out / adapter)
        return
    base = load_unet(device=torch.device("cpu"))
    unet = load_adapter_into(load_unet(device=torch.device("cpu")), out / adapter)
    x, t = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 500])
    with torch.no_grad():
        assert not torch.equal(unet(x, t).sample, base(x, t).sample)


@needs_models
def test_a_second_run_never_mixes_with_the_first(tiny, tmp_path, capsys):
    """Re-running into a folder that holds a run's outputs is refused; --overwrite replaces them all. (In-process:
    the same entry point as `python -m dphyper`, without three interpreter starts.)"""
    from dphyper.__main__ import main

    out = tmp_path / "o"
    base = ["run", "hypernet", "--images", str(tiny), "--steps", "2", "--out", str(out)]
    assert main([*base, "--samples", "6"]) == 0
    capsys.readouterr()
    assert main([*base, "--samples", "3"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err
    assert len(list((out / "samples").glob("*.png"))) == 6  # untouched
    (out / "notes.txt").write_text("mine")
    assert main([*base, "--samples", "3", "--overwrite"]) == 0
    assert len(list((out / "samples").glob("*.png"))) == 3 == json.loads((out / "report.json").read_text())["samples"]
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own outputs are replaced


def test_each_method_has_its_own_default_folder():
    from dphyper.__main__ import build_parser

    outs = {name: build_parser(["run", name]).parse_args(["run", name, "--images", "x"]).out for name in METHODS}
    assert len(set(outs.values())) == len(outs), outs
    help_text = build_parser(["run", "sparse"]).parse_known_args(["run", "sparse", "--images", "x"])[0]
    assert help_text.out.name == "out-sparse"


def test_help_answers_without_loading_the_heavy_libraries():
    """`--help` and a mistyped command answer at once (0.05 s, docs/BENCHMARKS.md; 7 s before issue 40) because they
    import neither torch nor diffusers, peft or open_clip: checked here by what is loaded, not by a stopwatch."""
    code = ("import sys\nfrom dphyper.__main__ import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'peft', 'open_clip', 'opacus') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=60)
    assert r.returncode == 0 and "run" in r.stdout and r.stdout.strip().endswith("[]"), r.stdout[-300:] + r.stderr[-500:]
    bad = cli("nonsense")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


# ------------------------------------------------------------------ every command line the README shows

def readme_cli_lines() -> list[str]:
    """The `python -m dphyper ...` lines of the code blocks of the README and docs/CLI.md, comments stripped."""
    text = (ROOT / "README.md").read_text() + (ROOT / "docs" / "CLI.md").read_text()
    lines = []
    for block in re.findall(r"```(?:bash)?\n(.*?)```", text, re.S):
        for ln in block.splitlines():
            ln = ln.split("  #")[0].strip()
            if ln.startswith("python -m dphyper"):
                lines.append(ln)
    return list(dict.fromkeys(lines))  # a line shown in both is one case


def concrete(line: str, tiny: Path, out: Path, first_only: bool = False) -> list[list[str]]:
    """One README line as argument lists: placeholders filled, every alternative `{a,b}` (or only the first) and
    option `[...]` taken."""
    words = shlex.split(line.replace(" / ", " ; "))[3:]
    if ";" in words:  # "a ... / b ...": two commands on one line
        i = words.index(";")
        return concrete("python -m dphyper " + " ".join(words[:i]), tiny, out, first_only) + \
            concrete(" ".join(["python", "-m", "dphyper", *words[i + 1:][3:]]), tiny, out, first_only)
    fill = {"METHOD": "hypernet", "DIR": str(tiny), "OUT": str(out), "M": "hypernet", "M1,M2": "hypernet,dpsgd",
            "S": "public-coats-100", "S1,S2": "public-coats-100", "K": "1", "...": "--help"}
    variants: list[list[str]] = [[]]
    for w in words:
        w = w.strip("[]")
        if w.startswith("{") and w.endswith("}"):
            alts = w[1:-1].split(",")
            variants = [v + [alt] for v in variants for alt in (alts[:1] if first_only else alts)]
        else:
            variants = [v + [fill.get(w, w)] for v in variants]
    return variants


def test_readme_cli_lines_parse(tiny, tmp_path):
    """Every README command line (each alternative) names commands and options the CLI has."""
    from dphyper.__main__ import build_parser

    lines = readme_cli_lines()
    assert len(lines) >= 10, lines
    for line in lines:
        for args in concrete(line, tiny, tmp_path):
            if "--help" in args:
                continue
            try:
                build_parser(args).parse_args(args)
            except SystemExit as exc:
                pytest.fail(f"README line does not parse: {line!r} -> {args}: exit {exc.code}")


# Each README command, run for real the cheapest way it can be (a new README command needs a line here, or it runs
# as `--help`): the whole line's own arguments, plus what makes it quick.
QUICK = {
    "sample": ["--samples", "2", "--steps", "2"],
    "evaluate": [],
    "audit": ["--trials", "200", "--n", "20"],
    "bench": [],  # only --plan lines run for real (--report-only rewrites tracked files: it runs as --help)
}


@needs_models
@pytest.mark.parametrize("line", readme_cli_lines())
def test_readme_cli_lines_run(line, tiny, tmp_path):
    """Each README command as a user types it, in a fresh process: the cheap ones run for real (the first of its
    alternatives), the expensive ones (training, a whole benchmark) answer `--help`. A new README line is a new
    case here."""
    for args in concrete(line, tiny, tmp_path / "o", first_only=True):  # each alternative parses (test above)
        cmd = args[0]
        real = cmd in QUICK and (cmd != "bench" or "--plan" in args)
        if cmd == "evaluate":
            args = ["evaluate", "--samples", str(tiny), "--reference", str(tiny)]
        elif cmd == "sample":
            args = ["sample", "--out", str(tmp_path / "s"), *QUICK["sample"]]
        elif real:
            args = [*args, *QUICK[cmd]]
        else:
            args = [*[a for a in args if not a.startswith("-")][:2], "--help"]
        r = cli(*args, cwd=tmp_path)
        expected = (0, 1, 3) if cmd == "audit" else (0,)  # audit's status is its verdict
        assert r.returncode in expected, f"{args}: {r.stderr[-2000:]}"
        assert "Traceback" not in r.stderr, args
        if cmd == "evaluate":
            assert "not meaningful" in json.loads(r.stdout)["warning"]  # 6 images: an FID that means nothing


def test_the_readme_shows_the_commands_users_need():
    lines = readme_cli_lines()
    for needed in ("run METHOD", "audit", "evaluate", "sample", "--report-only", "--plan", "train"):
        assert any(needed in ln for ln in lines), needed


def test_audit_exit_status_is_its_verdict():
    from dphyper.__main__ import AUDIT_EXIT, main

    assert AUDIT_EXIT == {"consistent": 0, "violated": 1, "inconclusive": 3}
    # A broken mechanism (no clipping) at a claim the trials can refute: violated -> 1.
    assert main(["audit", "--method", "hypernet", "--broken", "no-clip", "--epsilon", "0.5", "--trials", "400",
                 "--n", "20"]) == 1
    # The shipped mechanism at a claim 400 trials cannot reach: inconclusive -> 3 (not 0, "passed").
    assert main(["audit", "--method", "hypernet", "--epsilon", "8", "--trials", "400", "--n", "20"]) == 3


def test_report_only_leaves_a_clean_checkout_unchanged():
    """Issue 34: `bench --report-only` recomputes nothing and rewrites what it generates byte for byte (it once
    rewrote results.json with its own run time and this machine's absolute folder)."""
    import hashlib

    written = [ROOT / "bench" / "results.json", ROOT / "README.md", ROOT / "docs" / "BENCHMARKS.md",
               ROOT / "docs" / "privacy_utility.png", ROOT / "assets" / "curves" / "privacy_utility.json"]
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in written}
    r = cli("bench", "--report-only")
    assert r.returncode == 0, r.stderr[-2000:]
    changed = [str(p.relative_to(ROOT)) for p in written if hashlib.sha256(p.read_bytes()).hexdigest() != before[p]]
    assert not changed, changed
    assert "/work/" not in (ROOT / "bench" / "results.json").read_text()  # no machine's absolute folder
