"""docs/*.md: code links name functions that exist, at the right lines (tests/test_readme.py runs the snippets)."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("update_links", ROOT / "docs" / "update_links.py")
links = importlib.util.module_from_spec(spec)
spec.loader.exec_module(links)
DOCS = sorted((ROOT / "docs").glob("*.md"))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_code_links_are_current(doc):
    problems = links.check(doc)
    assert not problems, "\n".join(problems) + "\n(run: python docs/update_links.py)"


def test_principles_link_every_formula():
    text = (ROOT / "docs" / "principles.md").read_text(encoding="utf-8")
    assert len(links.LINK.findall(text)) >= 12
    for formula in ("softmax(Q Kᵀ / √d_k) V", "Π_t P(w_t | w_<t)", "MultiHead", "AdamW", "bits/byte", "i∈M"):
        assert formula in text
