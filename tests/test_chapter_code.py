"""Chapter code fits the text column: every line of a code cell the page shows is at most 80 characters.

The book's column is ~690 px wide; 80 characters of code fit it (a wider line scrolls sideways, and a reader
loses the end of it). The check is on the MyST source, so it holds however the book is built. Cells tagged
``remove-input`` (the Colab install cell) never reach the page and are not checked.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
sys.path.insert(0, str(ROOT / "tools"))

import sync_notebooks  # noqa: E402

MAX_LINE = 80

# Chapters whose long lines are reported as a note instead of a failure: none (all chapters fit the column).
EXCEPTIONS: set[str] = set()

CHAPTERS = sync_notebooks.chapters(BOOK)
TEMPLATE = ROOT / "tools" / "templates" / "chapter.md"

_FENCE = re.compile(r"^(`{3,}|~{3,})\s*\{code-cell\}")


def long_code_lines(text: str, limit: int = MAX_LINE) -> list[tuple[int, int, str]]:
    """(line number, length, line) of each code-cell line of a MyST notebook longer than ``limit``.

    Only the source of ``{code-cell}`` blocks counts (not their options, ``:tags: [...]`` lines or a YAML
    block between ``---`` lines, nor the Markdown around them), and not cells tagged ``remove-input``, which
    the page does not show; a cell ends at a fence of the same character, at least as long as the opening one.
    """
    found: list[tuple[int, int, str]] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if fence is None:
            match = _FENCE.match(line)
            if match:
                fence, cell, hidden, state = match.group(1), [], False, "start"
            continue
        stripped = line.strip()
        if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
            found += [] if hidden else cell
            fence = None
            continue
        if state == "start" and stripped == "---":
            state = "yaml"
            continue
        if state == "yaml":
            state = "start" if stripped == "---" else "yaml"
            hidden = hidden or ("tags" in line and "remove-input" in line)
            continue
        if state == "start" and re.match(r"^:[\w-]+:", line):
            hidden = hidden or (line.startswith(":tags:") and "remove-input" in line)
            continue
        state = "code"
        if len(line) > limit:
            cell.append((number, len(line), line))
    return found


def test_the_line_finder_reads_only_code_cells():
    text = "\n".join([
        "x" * 90,                       # prose: not code
        "```{code-cell} ipython3",
        ":tags: [hide-input, remove-output, some-long-option-that-is-not-code-at-all-xxxxxxxxxx]",
        "y = 1",
        "z = '" + "a" * 80 + "'",       # 86 characters: too long
        "```",
        "```python",
        "w" * 90,                       # a plain code block in the prose: not a cell
        "```",
        "````{code-cell} ipython3",
        "```",                          # shorter fence inside a longer one: still the cell
        "v" * 81,
        "````",
        "```{code-cell} ipython3",
        ":tags: [remove-input, remove-output]",
        "u" * 90,                       # a cell the page does not show
        "```",
        "```{code-cell} ipython3",
        "---",
        "tags: [remove-input]",
        "---",
        "u" * 90,                       # the same, options as YAML
        "```",
    ])
    assert [(n, length) for n, length, _ in long_code_lines(text)] == [(5, 86), (12, 81)]


def test_the_exceptions_are_chapters():
    names = {md.stem for md in CHAPTERS}
    stale = EXCEPTIONS - names
    assert not stale, f"EXCEPTIONS names chapters that do not exist: {sorted(stale)}"


@pytest.mark.parametrize("md", [*CHAPTERS, TEMPLATE], ids=[*(c.stem for c in CHAPTERS), "template"])
def test_code_lines_fit_the_column(md: Path):
    long = long_code_lines(md.read_text(encoding="utf-8"))
    if md.stem in EXCEPTIONS:
        if not long:
            pytest.fail(f"{md.name} has no code line over {MAX_LINE} characters: remove it from EXCEPTIONS")
        pytest.skip(f"{md.name}: {len(long)} code lines over {MAX_LINE} characters (listed in EXCEPTIONS)")
    report = "\n".join(f"  {md.name}:{n}: {length} characters" for n, length, _ in long)
    assert not long, f"code lines longer than {MAX_LINE} characters (they overflow the text column):\n{report}"
