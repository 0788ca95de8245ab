"""The book's wiring: toc, paired Colab notebooks, install cells, strict execution settings."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
sys.path.insert(0, str(ROOT / "tools"))

import sync_notebooks  # noqa: E402

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
CHAPTERS = sync_notebooks.chapters(BOOK)


def toc_files() -> list[str]:
    files = [TOC["root"]]
    for part in TOC.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


def test_book_toc_is_a_symlink_to_the_root_toc():
    link = BOOK / "_toc.yml"
    assert link.is_symlink(), "book/_toc.yml must be a symlink (jupyter-book looks for the toc in book/)"
    assert link.resolve() == (ROOT / "_toc.yml").resolve()


def test_every_toc_entry_exists():
    for name in toc_files():
        assert (BOOK / f"{name}.md").exists(), f"_toc.yml names {name}, but book/{name}.md is missing"


def test_every_notebook_chapter_is_in_the_toc():
    listed = set(toc_files())
    for md in CHAPTERS:
        assert md.stem in listed, f"{md.name} is not in _toc.yml"


def test_execution_is_strict_and_keyed_by_the_engine():
    execute = CONFIG["execute"]
    assert execute["execute_notebooks"] == "cache"  # jupyter-cache, behind tools/book_engine.py's key
    assert CONFIG["sphinx"]["local_extensions"]["book_engine"] == "tools"
    assert (ROOT / "tools" / "book_engine.py").exists()
    assert execute["allow_errors"] is False
    assert "**.ipynb" in CONFIG["exclude_patterns"]


def test_jupyter_book_is_pinned_below_2():
    req = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^jupyter-book>=1\.0\.4,<2$", req, re.M)


@pytest.mark.parametrize("md", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_colab_twin_is_in_sync_and_has_no_outputs(md: Path):
    twin = md.with_suffix(".ipynb")
    assert twin.exists(), f"{md.name} has no paired {twin.name} (run python tools/sync_notebooks.py)"
    nb = json.loads(twin.read_text())
    for cell in nb["cells"]:
        assert not cell.get("outputs"), f"{twin.name} is committed with outputs"
        assert cell.get("execution_count") is None, f"{twin.name} is committed with execution counts"
    assert not sync_notebooks.out_of_date(md), f"{twin.name} is out of date (run python tools/sync_notebooks.py)"


@pytest.mark.parametrize("md", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_first_cell_installs_fmlib_from_the_configured_repository_in_colab_only(md: Path):
    nb = json.loads(md.with_suffix(".ipynb").read_text())
    first = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
    assert '"google.colab" in sys.modules' in first
    assert f"git+{CONFIG['repository']['url']}" in first, "the install cell must use _config.yml's repository url"
    assert "torch" not in first.split("pip")[-1], "Colab has torch: install only fmlib"


@pytest.mark.parametrize("md", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_chapter_has_sympy_checks(md: Path):
    text = md.read_text()
    assert "import sympy" in text and "assert_identity(" in text, f"{md.name} asserts no identity with sympy"


def test_intro_has_the_notation_table():
    intro = (BOOK / "intro.md").read_text()
    assert "t = 0 is noise, t = 1 is data" in intro
    for symbol in (r"$X_0 \sim p$", r"$X_1 \sim q$", r"$\alpha_t$", r"$v_\theta(x, t)$"):
        assert symbol in intro
