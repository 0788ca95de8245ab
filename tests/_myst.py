"""The front matter jupytext needs to read a MyST Markdown chapter, for tests that write small chapters."""

MYST_HEADER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
"""


def tiny_book(folder, chapters: dict[str, str]):
    """A small book in ``folder/book`` with the repository's _config.yml and the given chapters (name: text).

    The config's local extension paths (tools/book_engine.py, book/_ext) are made absolute, so the copy finds them.
    """
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    book = Path(folder) / "book"
    book.mkdir()
    config = (root / "_config.yml").read_text()
    assert "book_engine: tools" in config
    config = config.replace("book_engine: tools", f"book_engine: {root / 'tools'}")
    config = config.replace("fm_book: book/_ext", f"fm_book: {root / 'book' / '_ext'}")
    (book / "_config.yml").write_text(config)
    shutil.copy(root / "book" / "references.bib", book / "references.bib")
    toc = "".join(f"  - file: {name}\n" for name in chapters)
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n" + toc)
    (book / "intro.md").write_text("# Intro\n\nA tiny book.\n")
    for name, text in chapters.items():
        (book / f"{name}.md").write_text(text)
    return book
