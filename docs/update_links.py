"""Keep the code links in docs/*.md pointing at the right lines.

A link names a function or class and where it lives:  [`GPT.forward`](../src/lmkit/models/gpt.py#L148)
`python docs/update_links.py` rewrites every line number from the current code; tests/test_docs.py
fails when a named function no longer exists or a line number is stale.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[`([A-Za-z_][\w.]*)`\]\(\.\./(src/lmkit/[\w/]+\.py)#L(\d+)\)")


def find_line(path: Path, qualname: str) -> int | None:
    """1-based line of `def name` / `class name`, inside the named class for `Class.method`."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start, indent = 0, ""
    parts = qualname.split(".")
    for depth, name in enumerate(parts):
        pat = re.compile(rf"^{indent}(\s*)(?:def|class) {re.escape(name)}\b")
        for i in range(start, len(lines)):
            m = pat.match(lines[i])
            if m and (depth == 0 and not m.group(1) or depth > 0):
                start, indent = i + 1, indent + "    "
                break
        else:
            return None
    return start


def check(doc: Path) -> list[str]:
    """Problems in one document: missing functions or stale line numbers."""
    problems = []
    for name, rel, line in LINK.findall(doc.read_text(encoding="utf-8")):
        actual = find_line(ROOT / rel, name) if (ROOT / rel).is_file() else None
        if actual is None:
            problems.append(f"{doc.name}: `{name}` not found in {rel}")
        elif actual != int(line):
            problems.append(f"{doc.name}: `{name}` is at {rel}#L{actual}, the link says #L{line}")
    return problems


def update(doc: Path) -> None:
    def fix(m):
        actual = find_line(ROOT / m.group(2), m.group(1))
        return m.group(0) if actual is None else f"[`{m.group(1)}`](../{m.group(2)}#L{actual})"
    doc.write_text(LINK.sub(fix, doc.read_text(encoding="utf-8")), encoding="utf-8")


if __name__ == "__main__":
    for doc in sorted((ROOT / "docs").glob("*.md")):
        update(doc)
        for p in check(doc):
            print(p)
    sys.exit(0)
