"""A planted wrong formula fails the strict book build, and the failure names the chapter."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _myst import MYST_HEADER, tiny_book

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
    return tiny_book(tmp_path, {"planted_chapter": CHAPTER.replace("PLANTED", rhs)})


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


@pytest.mark.slow
def test_wrong_formula_fails_plain_jupyter_book_build_and_names_the_chapter(tmp_path):
    """What readers run, without tools/build_book.py: the engine's warning fails the -W build."""
    book = make_book(tmp_path, "3 * t")
    jb = Path(sys.executable).parent / "jupyter-book"
    env = dict(os.environ, FMLIB_PROFILE="quick")
    result = subprocess.run([str(jb), "build", str(book), "-W", "--keep-going"], capture_output=True,
                            text=True, timeout=600, env=env)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-3000:]
    assert "chapter planted_chapter (planted_chapter.md) failed" in out, out[-3000:]
    assert "derivative of t squared" in out
