"""Every document the code and the notes point to is in the repository: a maintainer who clones it has them."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".venv", ".git", "results", "runs", "harness.egg-info", ".pytest_cache", ".ruff_cache"}


def _files():
    for path in ROOT.rglob("*"):
        if path.suffix in (".py", ".md", ".toml") and not SKIP & set(path.relative_to(ROOT).parts):
            yield path


def test_no_reference_to_documents_outside_the_repository():
    outside = re.compile(r"\b(?:spec|papers)/[\w.-]+|\bspec\.md\b")
    found = [f"{p.relative_to(ROOT)}:{i}: {m.group(0)}" for p in _files()
             for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) for m in outside.finditer(line)]
    assert found == []


def test_every_docs_reference_resolves():
    ref = re.compile(r"\bdocs/([\w.-]+\.md)\b")
    missing = [f"{p.relative_to(ROOT)}: docs/{m.group(1)}" for p in _files()
               for m in ref.finditer(p.read_text(errors="replace")) if not (ROOT / "docs" / m.group(1)).is_file()]
    assert missing == []
    # the index lists every note, and every note it lists exists
    index = (ROOT / "docs" / "README.md").read_text()
    listed = set(re.findall(r"\]\(([\w.-]+\.md)\)", index))
    notes = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert listed == notes
