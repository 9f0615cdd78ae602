"""The project's own promises: Spaces settings agree, pins are exact, the CLI documents itself."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dphyper.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[1]


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert m, "README.md must start with YAML front matter"
    return yaml.safe_load(m.group(1))


def test_front_matter_and_space_yaml_agree():
    fm = front_matter()
    space = yaml.safe_load((ROOT / "space.yaml").read_text())
    assert fm == space
    for key in ("title", "sdk", "sdk_version", "app_file", "python_version", "suggested_hardware", "license",
                "short_description", "tags"):
        assert key in fm, key
    assert fm["sdk"] == "gradio" and (ROOT / fm["app_file"]).exists()
    pins = dict(line.split("==") for line in _requirements())
    assert fm["sdk_version"] == pins["gradio"]
    # ZeroGPU Spaces run only Python 3.10.13 or 3.12.12; a CPU Space accepts either too.
    assert str(fm["python_version"]) in ("3.10", "3.12"), fm["python_version"]


def _requirements() -> list[str]:
    lines = [ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_requirements_are_exact_pins():
    reqs = _requirements()
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][A-Za-z0-9.+\-]*", r) for r in reqs), reqs
    names = {r.split("==")[0].lower().replace("_", "-") for r in reqs}
    for needed in ("torch", "torchvision", "diffusers", "peft", "open-clip-torch", "opacus", "torch-fidelity",
                   "gradio", "plotly", "pillow", "pytest", "accelerate", "dp-accounting", "hypothesis"):
        assert needed in names, needed
    assert "torch==2.14.1" in reqs and "torchvision==0.29.1" in reqs


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_one():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    setup = [b.strip() for b in blocks if "scripts/setup.sh" in b]
    assert len(setup) == 2, setup
    app_cmd, test_cmd = setup
    assert "app.py" in app_cmd and "pytest" in test_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def _all_parsers(parser, prefix=()):
    yield prefix, parser
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield from _all_parsers(sub, prefix + (name,))


def test_every_cli_option_is_documented():
    seen = set()
    for path, p in _all_parsers(build_parser()):
        seen.add(" ".join(path))
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) > 15, (path, action.dest)
    for cmd in ("train base", "train encoder", "train evaluator", "train hypernet", "sample", "evaluate",
                "generate", "examples"):
        assert cmd in seen, cmd


@pytest.mark.parametrize("args", [["--help"], pytest.param(["train", "hypernet", "--help"], marks=pytest.mark.slow),
                                  pytest.param(["generate", "--help"], marks=pytest.mark.slow)])
def test_cli_help_runs(args):
    """As a user runs it (a fresh process each, ~15 s of imports on 2 cores): the top level in the default
    run; every subcommand's help is also built in-process by test_every_subcommand_has_help."""
    out = subprocess.run([sys.executable, "-m", "dphyper", *args], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "usage" in out.stdout


def test_every_subcommand_has_help():
    import argparse

    from dphyper.__main__ import build_parser

    def walk(parser, path):
        assert "usage" in parser.format_help(), path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, path + [name])
                    seen.append(" ".join(path + [name]))

    seen: list[str] = []
    walk(build_parser(), [])
    assert {"train hypernet", "generate", "run"} <= set(seen), seen


def test_cli_reports_bad_input_without_traceback(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not a png")
    out = subprocess.run([sys.executable, "-m", "dphyper", "evaluate", "--samples", str(tmp_path), "--reference",
                          str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "x.png" in out.stderr


def test_runtime_debian_packages_have_one_source():
    """packages.txt (what a Space installs) lists the runtime apt packages; setup.sh installs from it."""
    pkgs = [ln.split("#")[0].strip() for ln in (ROOT / "packages.txt").read_text().splitlines()]
    assert "dataset-fashion-mnist" in pkgs
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    code = [ln for ln in setup.splitlines() if not ln.lstrip().startswith("#")]
    assert any("packages.txt" in ln for ln in code)
    assert not any("dataset-fashion-mnist" in ln for ln in code)  # not a second list of the same packages


# Slow (about 5 minutes, most of it the pip install into a fresh venv): not in the default suite, whose
# budget is ~5 minutes on 2 cores; run it with `python -m pytest -m slow` before a Space release.
@pytest.mark.slow
def test_space_build_check_serves_samples_from_what_a_space_installs():
    """scripts/space_check.sh: only requirements.txt in a fresh venv and the apt packages of
    packages.txt (never setup.sh), the committed tree, the front matter's app_file started as a
    Space starts it, and a visitor's API call that returns samples (issue 17). Minutes: most of it
    is the pip install; SPACE_VENV=DIR re-uses a venv the script made before."""
    out = subprocess.run(["bash", "scripts/space_check.sh"], capture_output=True, text=True, cwd=ROOT, timeout=3000)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "space-check: OK: 4 samples" in out.stdout


def test_readme_is_for_a_newcomer():
    """Issue 38: under 10,000 characters, the two set-up commands in its first 40 lines."""
    text = (ROOT / "README.md").read_text()
    assert len(text) < 10_000, len(text)
    head = "\n".join(text.splitlines()[:40])
    assert head.count("scripts/setup.sh") >= 2, "the two set-up commands come first"


def test_every_relative_link_in_readme_and_docs_resolves():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    bad = []
    for f in files:
        for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", f.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            if not (f.parent / target.split("#")[0]).exists():
                bad.append(f"{f.relative_to(ROOT)} -> {target}")
    assert not bad, bad


def test_readme_results_table_is_what_the_stored_cells_give():
    """Issue 34: the README's table is generated from bench/results.json (bench --report-only); no drift."""
    from dphyper.readme_table import readme_block, results_table

    assert readme_block((ROOT / "README.md").read_text()) == results_table().strip()
