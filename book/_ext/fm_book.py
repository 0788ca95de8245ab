"""The book's own Sphinx extension (loaded through ``sphinx.local_extensions`` in ``_config.yml``).

* **Open in Colab badge.** Every chapter (a page whose source has a committed ``.ipynb`` twin beside it) gets
  an "Open in Colab" badge right under its title, linking to that twin in the repository that ``_config.yml``
  names (``repository.url``, ``repository.branch``, ``repository.path_to_book``). Authors add nothing.
* **No script twice.** sphinx-thebe and sphinx-togglebutton register their inline configuration scripts
  twice in a Jupyter Book build (once at builder start, once when the documents are read), so every page declared
  ``const THEBE_JS_URL`` twice and the second copy threw "Identifier 'THEBE_JS_URL' has already been
  declared" in the reader's console. Identical scripts are kept once per page.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from docutils import nodes

COLAB = "https://colab.research.google.com"


def colab_url(repository_url: str, branch: str, path_to_book: str, docname: str,
              colab: str = COLAB) -> str:
    """The Colab address that opens ``<path_to_book>/<docname>.ipynb`` of a GitHub repository.

    ``https://github.com/ORG/REPO`` with branch ``main``, book folder ``book`` and page ``intro`` gives
    ``<colab>/github/ORG/REPO/blob/main/book/intro.ipynb``.

    Raises:
        ValueError: the repository is not a ``https://github.com/ORG/REPO`` address (Colab opens notebooks
            from GitHub only), or the branch or page name is empty.
    """
    parsed = urlparse(repository_url.strip())
    parts = [p for p in parsed.path.split("/") if p]
    if parsed.netloc.lower() not in ("github.com", "www.github.com") or len(parts) != 2:
        raise ValueError(f"Colab opens notebooks from a GitHub repository https://github.com/ORG/REPO, "
                         f"got {repository_url!r}")
    if not branch or not docname:
        raise ValueError(f"a Colab link needs a branch and a page name, got {branch!r} and {docname!r}")
    org, repo = parts[0], parts[1].removesuffix(".git")
    folder = "/".join(p for p in path_to_book.split("/") if p and p != ".")
    notebook = f"{folder}/{docname}.ipynb" if folder else f"{docname}.ipynb"
    return f"{colab.rstrip('/')}/github/{org}/{repo}/blob/{branch}/{notebook}"


def badge_html(url: str) -> str:
    """The badge: a link styled by ``_static/book.css`` (no image from the internet)."""
    return (f'<p class="fm-colab-badge"><a class="fm-colab-badge-link" href="{html.escape(url, quote=True)}"'
            ' target="_blank" rel="noopener">'
            '<span class="fm-colab-badge-logo" aria-hidden="true">CO</span>'
            '<span class="fm-colab-badge-text">Open in Colab</span></a></p>')


def insert_badge(doctree: nodes.document, url: str) -> bool:
    """Put the badge right after the page's first title (the chapter heading); False if the page has none."""
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None or not section.children or not isinstance(section[0], nodes.title):
        return False
    if any("fm-colab-badge" in node.get("classes", []) for node in section.findall(nodes.raw)):
        return True
    section.insert(1, nodes.raw("", badge_html(url), format="html", classes=["fm-colab-badge"]))
    return True


def _theme_option(app: Any, name: str, default: str = "") -> str:
    options = app.config.html_theme_options or {}
    value = options.get(name, default)
    return value if isinstance(value, str) else default


def add_colab_badge(app: Any, doctree: nodes.document, docname: str) -> None:
    """``doctree-resolved``: the badge on every chapter page of an HTML build."""
    if app.builder.format != "html":
        return
    source = Path(app.env.doc2path(docname))
    if not source.with_suffix(".ipynb").exists():
        return  # not a chapter: no notebook to open
    repository = _theme_option(app, "repository_url")
    if not repository:
        return
    launch = (app.config.html_theme_options or {}).get("launch_buttons") or {}
    colab = launch.get("colab_url") or COLAB
    url = colab_url(repository, _theme_option(app, "repository_branch", "main"),
                    _theme_option(app, "path_to_docs", ""), docname, colab)
    insert_badge(doctree, url)


def unique_scripts(scripts: list[Any]) -> list[Any]:
    """``scripts`` without repeats: a script is a repeat when its address and attributes (an inline script's
    body included) came before (the same inline script registered twice may differ in its filename, '' or None).
    """
    seen: set[tuple[str, tuple]] = set()
    kept = []
    for script in scripts:
        attributes = getattr(script, "attributes", None) or {}
        filename = getattr(script, "filename", script) or ""  # an inline script has '' or None
        key = (str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key in seen:
            continue
        seen.add(key)
        kept.append(script)
    return kept


def dedupe_scripts(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """``html-page-context``: each script once per page."""
    if "script_files" in context:
        context["script_files"] = unique_scripts(list(context["script_files"]))


def setup(app: Any) -> dict:
    app.connect("doctree-resolved", add_colab_badge)
    app.connect("html-page-context", dedupe_scripts, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
