"""The repository stands alone: a user's clone has nothing beside it, so no code, test, script or comment may cite
or read a document outside it (the design lives in docs/design.md)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(r"DESIGN(\.md)?( ?§| section)|STYLE\.md|\.\./shared|parent / \"shared\""
                     r"|parents\[\d\] / \"shared\"")


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [REPO / p for p in out.splitlines() if p.endswith((".py", ".md", ".yaml", ".yml", ".toml", ".cfg"))
            or p in ("Makefile", "Dockerfile", ".ci/run")]


def test_nothing_cites_or_reads_outside_the_repository():
    hits = []
    for path in _tracked():
        if path == Path(__file__).resolve() or not path.is_file():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)


def test_the_design_the_comments_cite_exists():
    design = (REPO / "docs" / "design.md").read_text()
    cited = set()
    for path in _tracked():
        if path.is_file():
            cited |= set(re.findall(r"docs/design\.md §(\d+)", path.read_text(errors="replace")))
    assert cited, "no comment points at docs/design.md"
    for section in cited:
        assert f"## §{section} " in design, f"docs/design.md has no §{section}"
