"""Generated sections of a Markdown file, between ``<!-- name:start -->`` and ``<!-- name:end -->`` markers
(docs/BENCHMARKS.md's suites, the README's results table)."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(doc: Path, name: str, body: str) -> None:
    doc.parent.mkdir(parents=True, exist_ok=True)
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\nNumbers measured by `python -m dphyper bench`.\n"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)
