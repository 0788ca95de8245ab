"""A planted wrong formula fails the strict book build, and the failure names the chapter."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _myst import MYST_HEADER

ROOT = Path(__file__).resolve().parent.parent

CHAPTER = MYST_HEADER + """
# A chapter with a planted error

```{code-cell} ipython3
import sympy as sp
from fmlib.symbolic import assert_identity

t = sp.symbols("t", real=True)
assert_identity(sp.diff(t**2, t), PLANTED, name="derivative of t squared")
```
"""


def make_book(tmp_path: Path, rhs: str) -> Path:
    book = tmp_path / "book"
    book.mkdir()
    # the book's own extension is found relative to the config: point the copy at this checkout's
    config = (ROOT / "_config.yml").read_text()
    (book / "_config.yml").write_text(config.replace("fm_book: book/_ext", f"fm_book: {ROOT / 'book' / '_ext'}"))
    shutil.copy(ROOT / "book" / "references.bib", book / "references.bib")
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: planted_chapter\n")
    (book / "intro.md").write_text("# Intro\n\nA tiny book.\n")
    (book / "planted_chapter.md").write_text(CHAPTER.replace("PLANTED", rhs))
    return book


def build(book: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "build_book.py"), "--book-dir", str(book),
                           "--profile", "quick"], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_wrong_formula_fails_the_build_and_names_the_chapter(tmp_path):
    result = build(make_book(tmp_path, "3 * t"))
    assert result.returncode != 0, result.stdout[-3000:]
    assert "FAILED" in result.stdout
    assert "chapter planted_chapter" in result.stdout
    assert "derivative of t squared" in result.stdout


@pytest.mark.slow
def test_right_formula_builds(tmp_path):
    result = build(make_book(tmp_path, "2 * t"))
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.slow
def test_chapter_template_builds(tmp_path):
    """The template a new chapter starts from passes the strict build (sympy assertion, profile, glue)."""
    book = make_book(tmp_path, "2 * t")
    shutil.copy(ROOT / "tools" / "templates" / "chapter.md", book / "planted_chapter.md")
    result = build(book)
    assert result.returncode == 0, result.stdout[-3000:]
    page = (book / "_build" / "html" / "planted_chapter.html").read_text()
    assert re.search(r'class="pasted-text">\d\.\d\d<', page), "the glued value is not in the page"
