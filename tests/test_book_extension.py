"""The book's Sphinx extension (book/_ext/fm_book.py): the Colab badge of every chapter, scripts once per page."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from docutils import nodes
from docutils.frontend import get_default_settings
from docutils.parsers.rst import Parser
from docutils.utils import new_document

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import fm_book  # noqa: E402

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())


def test_the_book_loads_the_extension_from_its_folder():
    local = CONFIG["sphinx"]["local_extensions"]
    assert (ROOT / local["fm_book"] / "fm_book.py").exists()


def test_colab_url_of_the_configured_repository():
    repo = CONFIG["repository"]
    url = fm_book.colab_url(repo["url"], repo["branch"], repo["path_to_book"], "fm_vs_cfm")
    org_repo = repo["url"].removeprefix("https://github.com/")
    assert url == (f"https://colab.research.google.com/github/{org_repo}/blob/{repo['branch']}/"
                   f"{repo['path_to_book']}/fm_vs_cfm.ipynb")


@pytest.mark.parametrize(("repository", "folder", "expected"), [
    ("https://github.com/a/b", "book", "https://colab.research.google.com/github/a/b/blob/dev/book/x.ipynb"),
    ("https://github.com/a/b.git/", "/docs/book/", "https://colab.research.google.com/github/a/b/blob/dev/docs/book/x.ipynb"),
    ("https://github.com/a/b", ".", "https://colab.research.google.com/github/a/b/blob/dev/x.ipynb"),
    ("https://github.com/a/b", "", "https://colab.research.google.com/github/a/b/blob/dev/x.ipynb"),
])
def test_colab_url_forms(repository, folder, expected):
    assert fm_book.colab_url(repository, "dev", folder, "x") == expected


@pytest.mark.parametrize("repository", ["https://gitlab.com/a/b", "https://github.com/a", "github.com/a/b/c"])
def test_colab_url_refuses_what_colab_cannot_open(repository):
    with pytest.raises(ValueError, match="GitHub"):
        fm_book.colab_url(repository, "main", "book", "x")


def _doctree(source: str) -> nodes.document:
    document = new_document("<test>", get_default_settings(Parser))
    Parser().parse(source, document)
    return document


def test_badge_goes_right_under_the_title_once():
    doctree = _doctree("Title\n=====\n\nFirst paragraph.\n\nSub\n---\n\nMore.\n")
    assert fm_book.insert_badge(doctree, "https://colab.example/x.ipynb")
    assert fm_book.insert_badge(doctree, "https://colab.example/x.ipynb")  # a second call adds nothing
    section = next(iter(doctree.findall(nodes.section)))
    assert isinstance(section[0], nodes.title) and isinstance(section[1], nodes.raw)
    assert 'href="https://colab.example/x.ipynb"' in section[1].astext()
    assert sum(1 for _ in doctree.findall(nodes.raw)) == 1
    assert isinstance(section[2], nodes.paragraph)


def test_no_badge_on_a_page_without_a_title():
    assert not fm_book.insert_badge(_doctree("Just a paragraph.\n"), "https://colab.example/x.ipynb")


def _app(tmp_path: Path, fmt: str = "html", theme_options: dict | None = None):
    options = {"repository_url": "https://github.com/a/b", "repository_branch": "main", "path_to_docs": "book",
               "launch_buttons": {"colab_url": "https://colab.research.google.com"}}
    if theme_options is not None:
        options = theme_options
    env = SimpleNamespace(doc2path=lambda name: str(tmp_path / f"{name}.md"))
    return SimpleNamespace(builder=SimpleNamespace(format=fmt), env=env,
                           config=SimpleNamespace(html_theme_options=options))


def test_every_chapter_gets_the_badge_and_other_pages_do_not(tmp_path):
    (tmp_path / "chapter.md").write_text("")
    (tmp_path / "chapter.ipynb").write_text("{}")
    (tmp_path / "intro.md").write_text("")
    source = "Title\n=====\n\nText.\n"
    chapter, intro, latex = _doctree(source), _doctree(source), _doctree(source)
    fm_book.add_colab_badge(_app(tmp_path), chapter, "chapter")
    fm_book.add_colab_badge(_app(tmp_path), intro, "intro")
    fm_book.add_colab_badge(_app(tmp_path, fmt="latex"), latex, "chapter")
    raws = [n.astext() for n in chapter.findall(nodes.raw)]
    assert len(raws) == 1
    assert "https://colab.research.google.com/github/a/b/blob/main/book/chapter.ipynb" in raws[0]
    assert not list(intro.findall(nodes.raw)) and not list(latex.findall(nodes.raw))


def test_unique_scripts_keeps_the_first_of_identical_scripts():
    from sphinx.builders.html._assets import _JavaScript

    thebe = "const THEBE_JS_URL = 'x'"
    scripts = [_JavaScript("a.js"), _JavaScript(None, body=thebe), _JavaScript("", body=thebe),
               _JavaScript("a.js"), _JavaScript("a.js", defer="defer"), _JavaScript("", body="other")]
    kept = fm_book.unique_scripts(scripts)
    assert kept == [scripts[0], scripts[1], scripts[4], scripts[5]]
