"""tools/book_engine.py: the execution cache's key, and that a build never renders stale outputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from _myst import MYST_HEADER, tiny_book

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import book_engine  # noqa: E402

CHAPTER = MYST_HEADER + """
# A chapter PROSE

```{code-cell} ipython3
import fmlib
print("the constant is", fmlib.ENGINE_TEST_CONSTANT)
```
"""


def code_hash(text: str, tmp_path: Path) -> str:
    """jupyter-cache's hash of a MyST chapter, read as myst-nb reads it (what the key starts from)."""
    from jupyter_cache import get_cache
    from myst_nb.core.read import read_myst_markdown_notebook
    from myst_parser.config.main import MdParserConfig

    nb = read_myst_markdown_notebook(text, MdParserConfig())
    return get_cache(str(tmp_path / "jc")).create_hashed_notebook(nb)[1]


def key(tmp_path, text=CHAPTER, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FMLIB_")}
    environ.update(env)
    return book_engine.chapter_key(code_hash(text, tmp_path), book_engine.environment_key(environ))


def test_prose_does_not_change_the_key(tmp_path):
    assert key(tmp_path) == key(tmp_path, CHAPTER.replace("PROSE", "with other prose"))


def test_a_code_cell_changes_the_key(tmp_path):
    assert key(tmp_path) != key(tmp_path, CHAPTER.replace('"the constant is"', '"constant:"'))


def test_profile_and_result_settings_change_the_key(tmp_path):
    base = key(tmp_path, FMLIB_PROFILE="quick")
    assert base != key(tmp_path, FMLIB_PROFILE="full")
    assert base != key(tmp_path, FMLIB_PROFILE="quick", FMLIB_MAX_STEPS="20")
    assert base != key(tmp_path, FMLIB_PROFILE="quick", FMLIB_PROGRESS="bar")
    assert base != key(tmp_path, FMLIB_PROFILE="quick", FMLIB_SOMETHING_NEW="1")  # unknown: counted


def test_settings_that_cannot_change_a_page_leave_the_key(tmp_path):
    base = key(tmp_path, FMLIB_PROFILE="quick")
    assert base == key(tmp_path, FMLIB_PROFILE="quick", FMLIB_THREADS="2", FMLIB_CACHE_DIR=str(tmp_path),
                       FMLIB_CACHE="0", FMLIB_BOOK_JOBS="3", FMLIB_DEVICE="")
    # the profile and device count as what they resolve to: unset on a CPU machine is quick on the CPU
    assert key(tmp_path, FMLIB_DEVICE="cpu") == key(tmp_path, FMLIB_PROFILE="quick", FMLIB_DEVICE="cpu")


def test_the_library_digest_sees_every_file(tmp_path, monkeypatch):
    pkg = tmp_path / "libroot" / "enginepkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("A = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "deep.py").write_text("B = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "libroot"))
    first = book_engine.package_digest("enginepkg")
    assert first == book_engine.package_digest("enginepkg")
    (pkg / "sub" / "deep.py").write_text("B = 2\n")
    second = book_engine.package_digest("enginepkg")
    assert second != first
    (pkg / "style.mplstyle").write_text("lines.linewidth: 1\n")
    assert book_engine.package_digest("enginepkg") != second


def test_queue_is_longest_first_and_new_chapters_start_first():
    def chapter(name: str, code: str):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
        return book_engine.Chapter(name, Path(f"{name}.md"), nb)

    chapters = [chapter("short", "x"), chapter("long", "x"), chapter("new_small", "x"),
                chapter("new_big", "x" * 100)]
    order = book_engine.queue_order(chapters, {"short": 10.0, "long": 200.0})
    assert [c.docname for c in order] == ["new_big", "new_small", "long", "short"]


def _jb(book: Path, env: dict) -> subprocess.CompletedProcess:
    jb = Path(sys.executable).parent / "jupyter-book"
    return subprocess.run([str(jb), "build", str(book), "-W", "--keep-going"], capture_output=True,
                          text=True, timeout=600, env=env)


def _timings(book: Path) -> dict:
    info = json.loads((book / "_build" / book_engine.TIMINGS_FILE).read_text())
    return {c["chapter"]: c for c in info["chapters"]}


@pytest.mark.slow
def test_plain_jupyter_book_build_is_never_stale(tmp_path):
    """Build with plain `jupyter-book build` (incremental, as readers run it): nothing changed -> from the
    cache; prose edit -> re-rendered from the cache; fmlib constant changed -> executed, the page shows it."""
    lib = tmp_path / "lib"
    shutil.copytree(ROOT / "fmlib", lib / "fmlib", ignore=shutil.ignore_patterns("__pycache__"))
    init = lib / "fmlib" / "__init__.py"
    original = init.read_text()
    init.write_text(original + "\nENGINE_TEST_CONSTANT = 1111\n")
    book = tiny_book(tmp_path, {"chapter": CHAPTER})
    env = dict(os.environ, PYTHONPATH=str(lib), FMLIB_PROFILE="quick")
    page = book / "_build" / "html" / "chapter.html"

    def build() -> dict:
        result = _jb(book, env)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        assert "book_engine: chapter execution" in result.stdout
        assert "Executing notebook" not in result.stdout  # myst-nb found every chapter in the cache
        return _timings(book)["chapter"]

    first = build()
    assert not first["cached"] and "the constant is 1111" in page.read_text()
    assert build()["cached"]  # nothing changed
    (book / "chapter.md").write_text(CHAPTER.replace("PROSE", "with new prose"))
    again = build()
    assert again["cached"] and "with new prose" in page.read_text()  # re-rendered, not executed
    init.write_text(original + "\nENGINE_TEST_CONSTANT = 2222\n")  # only the library changed
    changed = build()
    assert not changed["cached"]
    assert "the constant is 2222" in page.read_text()
    assert "the constant is 1111" not in page.read_text()


def test_model_reuse_names_models_one_chapter_trained_and_another_loaded():
    records = [{"event": "trained", "name": "digits", "key": "k1", "chapter": "a"},
               {"event": "loaded", "name": "digits", "key": "k1", "chapter": "b"},
               {"event": "trained", "name": "toy", "key": "k2", "chapter": "b"},
               {"event": "loaded", "name": "toy", "key": "k2", "chapter": "b"},  # same chapter: not shared
               {"event": "loaded", "name": "old", "key": "k3", "chapter": "a"}]  # trained in an earlier build
    line = book_engine.model_reuse(records)
    assert line.startswith("models: 2 trained, 3 loaded from the checkpoint cache")
    assert line.endswith("trained by one chapter and loaded by another: digits (a → b)")
    assert book_engine.model_reuse([]) == "models: 0 trained, 0 loaded from the checkpoint cache"


def test_the_ledger_variables_do_not_change_the_key():
    assert {"FMLIB_CHAPTER", "FMLIB_CACHE_LOG"} <= book_engine.IRRELEVANT_ENV
