#!/usr/bin/env python3
"""Read the built book in a real browser and measure what a reader sees (``make check-pages``).

    python tools/check_pages.py [--html _build/html] [--out _build/page-check] [--pages intro,fm_vs_cfm]

Headless Chromium (Debian's ``chromium``, driven by Playwright from PyPI) opens every page of the table of
contents at 1280 px (desktop), 800 px (tablet) and 390 px (phone) and measures:

* **figures**: the displayed scale of every figure, the width it has on the page over its design width at the
  book's 100 px per inch (read from the PNG's resolution: a retina PNG is twice as dense); at scale 1 the 9 pt
  tick labels of ``fmlib.plotting``'s style are 12.5 px, at 0.8 they are 10 px. Checked at desktop width.
* **blocks wider than the column** (code, cell outputs, tables, display equations, images): each one that does
  not fit the text column is *scrollable* (inside a box that scrolls sideways, within the column) or
  *clipped* (cut off, or spilling past the column).
* **math**: MathJax (served from a local copy, ``npm ci --prefix tools/pages``) renders every formula; any
  MathJax error box or unrendered formula is reported.
* **navigation**: at desktop width the table of contents is on screen and there is one search field; at
  tablet and phone widths the ☰ button opens the table of contents and, on chapters, the ☷ button opens the
  page's contents.
* **Colab**: every chapter (a page with an ``.ipynb`` twin in book/) has its "Open in Colab" badge.
* **console**: JavaScript exceptions of the page (a script that throws), and requests that tried to leave
  the machine (all are blocked: the check needs no internet).

It prints a table per page, writes ``report.json`` and screenshots (the top of each page at each width, the
open phone navigation, the smallest figure, the first clipped block) into ``--out``, and exits 1 when a check
fails. ``EXCEPTIONS`` lists checks waived for pages being reworked (their numbers are still printed).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import statistics
import struct
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import yaml

ROOT = Path(__file__).resolve().parent.parent
MATHJAX_DEFAULT = ROOT / "tools" / "pages" / "node_modules" / "mathjax" / "es5"

WIDTHS = {"desktop": 1280, "tablet": 800, "phone": 390}
HEIGHT = {"desktop": 900, "tablet": 1000, "phone": 844}
MIN_FIGURE_SCALE = 0.8   # 9 pt tick labels at >= 10 px
DESIGN_PX_PER_INCH = 100  # fmlib.plotting: figure.dpi, the column is 6.9 in = 690 px

# Checks waived per page (figure sizes are the chapter's, not the site's): empty, every chapter passes them all.
EXCEPTIONS: dict[str, set[str]] = {}


# ---------------------------------------------------------------------------------------------- helpers

def png_dpi(path: Path) -> float | None:
    """Horizontal resolution (dots per inch) recorded in a PNG's pHYs chunk; None if absent or not a PNG."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    at = 8
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind == b"pHYs" and length >= 9:
            ppu_x, _, unit = struct.unpack(">IIB", data[at + 8:at + 17])
            return ppu_x * 0.0254 if unit == 1 else None
        if kind == b"IDAT":
            return None
        at += 12 + length
    return None


def figure_scale(displayed_css_px: float, natural_px: int, dpi: float | None) -> float:
    """Displayed width over design width, where design width = natural pixels at ``DESIGN_PX_PER_INCH``.

    A 6.9 in figure saved at 200 dpi (1380 px) shown 690 px wide has scale 1; so does one saved at 100 dpi
    (690 px) shown 690 px wide. Without a recorded dpi the PNG is taken at the design density.
    """
    if natural_px <= 0:
        raise ValueError(f"natural width must be positive, got {natural_px}")
    design = natural_px * DESIGN_PX_PER_INCH / (dpi or DESIGN_PX_PER_INCH)
    return displayed_css_px / design


def toc_pages(root: Path = ROOT) -> list[str]:
    """Page names of the table of contents, root first."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    pages = [toc["root"]]
    for part in toc.get("parts", []):
        for chapter in part.get("chapters", []):
            pages.append(chapter["file"])
            pages += [s["file"] for s in chapter.get("sections", [])]
    return pages


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # no request log on stderr
        pass


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``folder`` on the loopback interface (a free port); returns the server and its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def find_chromium(explicit: str | None) -> str | None:
    for candidate in (explicit, os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (path := shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)):
            return path
    return None


# ----------------------------------------------------------------------------------- in-page measuring

MEASURE_JS = r"""
() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const ar = article.getBoundingClientRect();
  const cs = getComputedStyle(article);
  const colLeft = ar.left + parseFloat(cs.paddingLeft);
  const colRight = ar.right - parseFloat(cs.paddingRight);
  const colWidth = colRight - colLeft;
  const visible = (el) => {
    const r = el.getBoundingClientRect(); const s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none';
  };
  const hiddenByToggle = (el) => !!el.closest('details:not([open]) > :not(summary), .toggle-hidden, [hidden]');
  const label = (el) => (el.innerText || el.getAttribute('alt') || el.textContent || '').trim().slice(0, 70);
  const scroller = (el) => {
    for (let n = el; n && n !== article.parentElement; n = n.parentElement) {
      const ox = getComputedStyle(n).overflowX;
      if (ox === 'auto' || ox === 'scroll') return n;
    }
    return null;
  };
  const classify = (el) => {
    const r = el.getBoundingClientRect();
    const content = Math.max(el.scrollWidth, r.width);
    const overflowsSelf = el.scrollWidth > el.clientWidth + 1;
    const overflowsCol = r.right > colRight + 1 || r.left < colLeft - 1 || content > colWidth + 1;
    if (!overflowsSelf && !overflowsCol) return 'fits';
    const sc = scroller(el);
    if (sc) {
      const sr = sc.getBoundingClientRect();
      if (sr.right <= colRight + 1 && sr.left >= colLeft - 1 && sc.scrollWidth > sc.clientWidth - 1) return 'scrollable';
    }
    return 'clipped';
  };
  const blocks = [];
  const add = (kind, el) => {
    if (!visible(el) || hiddenByToggle(el)) return;
    const status = classify(el);
    blocks.push({kind, status, content: Math.round(el.scrollWidth), box: Math.round(el.clientWidth), label: label(el)});
    if (status === 'clipped') el.setAttribute('data-page-check', 'clipped-' + blocks.length);
  };
  article.querySelectorAll('div.cell_input pre').forEach(el => add('code', el));
  article.querySelectorAll('div.cell_output > *').forEach(out => add('output', out.querySelector('pre, table') || out));
  article.querySelectorAll('div.highlight pre').forEach(el => { if (!el.closest('div.cell')) add('code', el); });
  article.querySelectorAll('table').forEach(el => { if (!el.closest('div.cell_output')) add('table', el); });
  article.querySelectorAll('div.math, mjx-container[display="true"]').forEach(el => {
    if (el.matches('mjx-container') && el.closest('div.math')) return;
    add('math', el.querySelector('mjx-container') || el);
  });
  const figures = [];
  article.querySelectorAll('img').forEach(img => {
    if (!visible(img) || hiddenByToggle(img) || img.naturalWidth < 80) return;
    const status = classify(img);
    figures.push({src: img.currentSrc || img.src, natural: img.naturalWidth, shown: img.getBoundingClientRect().width,
                  status, alt: img.getAttribute('alt') || ''});
    if (status === 'clipped') blocks.push({kind: 'image', status, content: img.naturalWidth,
                                           box: Math.round(img.getBoundingClientRect().width), label: img.src.slice(-40)});
  });
  const mathEls = [...document.querySelectorAll('span.math, div.math')];
  const unrendered = mathEls.filter(el => !el.querySelector('mjx-container')).map(label);
  const merrors = [...document.querySelectorAll('mjx-merror')].map(el => el.getAttribute('data-mjx-error') || label(el));
  return {colWidth: Math.round(colWidth), blocks, figures,
          math: {total: mathEls.length, unrendered, errors: merrors},
          scrollX: document.documentElement.scrollWidth > window.innerWidth + 1};
}
"""

NAV_JS = r"""
(which) => {
  // links of the site's table of contents (or of the page's contents) that a reader can see now
  const sel = which === 'primary'
    ? '.bd-sidebar-primary nav a, #pst-primary-sidebar-modal nav a, dialog[open] nav.bd-docs-nav a'
    : '.bd-sidebar-secondary nav a, #pst-secondary-sidebar-modal nav a, dialog[open] .bd-toc-nav a';
  const inView = (el) => {
    const r = el.getBoundingClientRect(); const s = getComputedStyle(el);
    if (!(r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none')) return false;
    if (r.right <= 0 || r.left >= window.innerWidth || r.bottom <= 0 || r.top >= window.innerHeight) return false;
    const x = Math.min(Math.max(r.left + Math.min(10, r.width / 2), 0), window.innerWidth - 1);
    const y = Math.min(Math.max(r.top + r.height / 2, 0), window.innerHeight - 1);
    const hit = document.elementFromPoint(x, y);
    return !!hit && (hit === el || el.contains(hit) || hit.contains(el));
  };
  return [...document.querySelectorAll(sel)].filter(inView).length;
}
"""

SEARCH_JS = r"""
() => {
  // search fields a reader sees at the top of the page (not the search dialog, which opens on demand)
  const els = document.querySelectorAll('.search-button-field, form.bd-search, input[type="search"]');
  let n = 0;
  for (const el of els) {
    const r = el.getBoundingClientRect(); const s = getComputedStyle(el);
    if (r.width > 40 && r.height > 0 && r.top < window.innerHeight && s.visibility !== 'hidden'
        && s.display !== 'none' && !el.closest('dialog, .search-button__wrapper')
        && !(el.parentElement && el.parentElement.closest('.search-button-field, form.bd-search'))) n++;
  }
  return n;
}
"""


@dataclass
class PageResult:
    page: str
    width: str
    col_width: int = 0
    blocks: list[dict] = field(default_factory=list)
    figures: list[dict] = field(default_factory=list)
    math: dict = field(default_factory=dict)
    nav: dict = field(default_factory=dict)
    search_fields: int | None = None
    page_scrolls_sideways: bool = False
    colab: str | None = None        # the Open in Colab badge's address (chapters, desktop width)
    is_chapter: bool = False
    errors: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(b["status"] == status for b in self.blocks)


def _wait_for_math(page, timeout_ms: int = 60_000) -> None:
    page.wait_for_function(
        "() => !window.MathJax || (window.MathJax.startup && window.MathJax.startup.promise"
        " && (window.__fmMath || (window.MathJax.startup.promise.then(() => window.__fmMath = true), false)))",
        timeout=timeout_ms)


def _nav_check(page, which: str) -> dict:
    button = None
    for candidate in page.locator(f"button.{which}-toggle, label.{which}-toggle").all():
        if candidate.is_visible():
            button = candidate
            break
    if button is None:
        return {"button": False, "links_before": page.evaluate(NAV_JS, which), "links_after": 0}
    before = page.evaluate(NAV_JS, which)
    button.click()
    page.wait_for_timeout(700)
    after = page.evaluate(NAV_JS, which)
    return {"button": True, "links_before": before, "links_after": after}


def check_page(context, base: str, html: Path, name: str, width: str, shots: Path | None) -> PageResult:
    result = PageResult(name, width)
    page = context.new_page()
    page.set_default_timeout(60_000)  # a long chapter on a loaded 2-core machine
    page.on("pageerror", lambda exc: result.errors.append(f"page error: {exc}"))
    try:
        page.goto(base + f"{name}.html", wait_until="load")
        try:
            _wait_for_math(page)
        except Exception:  # noqa: BLE001 - reported as unrendered math below
            result.errors.append("MathJax did not finish within 60 s")
        page.wait_for_timeout(300)
        data = page.evaluate(MEASURE_JS)
        result.col_width = data["colWidth"]
        result.blocks = data["blocks"]
        result.math = data["math"]
        result.page_scrolls_sideways = data["scrollX"]
        for fig in data["figures"]:
            local = html / unquote(urlparse(fig["src"]).path).lstrip("/")
            dpi = png_dpi(local)
            fig["dpi"] = dpi
            fig["scale"] = round(figure_scale(fig["shown"], fig["natural"], dpi), 3)
            result.figures.append(fig)
        if shots is not None:
            page.screenshot(path=str(shots / f"{name}-{width}-top.png"))
            clipped = page.locator("[data-page-check^=clipped]").first
            if clipped.count():
                clipped.scroll_into_view_if_needed()
                page.screenshot(path=str(shots / f"{name}-{width}-clipped.png"))
        if width == "desktop":
            result.is_chapter = (ROOT / "book" / f"{name}.ipynb").exists()
            result.colab = page.evaluate(
                "() => { const a = document.querySelector('article.bd-article a.fm-colab-badge-link');"
                " return a ? a.href : null; }")
            result.search_fields = page.evaluate(SEARCH_JS)
            result.nav["primary"] = {"button": None, "links_before": page.evaluate(NAV_JS, "primary"),
                                     "links_after": None}
            if shots is not None and result.figures:
                smallest = min(range(len(result.figures)), key=lambda i: result.figures[i]["scale"])
                img = page.locator("article.bd-article img").nth(smallest)
                img.scroll_into_view_if_needed()
                page.screenshot(path=str(shots / f"{name}-{width}-smallest-figure.png"))
        else:
            page.evaluate("window.scrollTo(0, 0)")
            result.nav["primary"] = _nav_check(page, "primary")
            if shots is not None:
                page.screenshot(path=str(shots / f"{name}-{width}-nav.png"))
            page.keyboard.press("Escape")
            page.wait_for_timeout(300)
            if page.locator(".bd-sidebar-secondary nav a").count():
                page.reload(wait_until="load")
                result.nav["secondary"] = _nav_check(page, "secondary")
    finally:
        page.close()
    return result


def failures(result: PageResult) -> list[str]:
    """What fails for one page at one width (after its EXCEPTIONS)."""
    waived = EXCEPTIONS.get(result.page, set())
    out = []
    if result.count("clipped"):
        out.append(f"{result.count('clipped')} block(s) cut off or spilling past the column")
    if result.page_scrolls_sideways:
        out.append("the whole page scrolls sideways")
    if result.math.get("errors") or result.math.get("unrendered"):
        out.append(f"math: {len(result.math['errors'])} error(s), {len(result.math['unrendered'])} unrendered")
    if result.width == "desktop" and "figure-scale" not in waived:
        small = [f for f in result.figures if f["scale"] < MIN_FIGURE_SCALE]
        if small:
            out.append(f"{len(small)} figure(s) shown below {MIN_FIGURE_SCALE}x")
    for which, nav in result.nav.items():
        if result.width == "desktop":
            if not nav["links_before"]:
                out.append("no table of contents on screen")
        elif not nav["button"] or not nav["links_after"]:
            out.append(f"the {which} navigation does not open")
    if result.is_chapter and not (result.colab or "").endswith(f"/{result.page}.ipynb"):
        out.append(f"no Open in Colab badge for {result.page}.ipynb under the title (got {result.colab!r})")
    if result.search_fields is not None and result.search_fields > 1:
        out.append(f"{result.search_fields} search fields in the header")
    out += result.errors
    return out


def summarize(results: list[PageResult]) -> str:
    lines = [f"{'page':<20} {'width':<7} {'col':>4} {'figs':>4} {'min':>5} {'med':>5} {'<0.8':>4}  "
             f"{'wide':>4} {'scroll':>6} {'clip':>4}  {'math':>5} {'err':>3}  {'nav':<10} {'search':>6}  problems"]
    for r in results:
        scales = [f["scale"] for f in r.figures]
        wide = r.count("scrollable") + r.count("clipped")
        nav = "-"
        if r.nav:
            parts = []
            for which, n in r.nav.items():
                ok = n["links_before"] if r.width == "desktop" else (n["button"] and n["links_after"])
                parts.append(("☰" if which == "primary" else "☷") + ("ok" if ok else "NO"))
            nav = " ".join(parts)
        problems = "; ".join(failures(r)) or "ok"
        lines.append(
            f"{r.page:<20} {r.width:<7} {r.col_width:>4} {len(scales):>4} "
            f"{(min(scales) if scales else float('nan')):>5.2f} {(statistics.median(scales) if scales else float('nan')):>5.2f} "
            f"{sum(s < MIN_FIGURE_SCALE for s in scales):>4}  {wide:>4} {r.count('scrollable'):>6} {r.count('clipped'):>4}  "
            f"{r.math.get('total', 0):>5} {len(r.math.get('errors', [])) + len(r.math.get('unrendered', [])):>3}  "
            f"{nav:<10} {('-' if r.search_fields is None else r.search_fields):>6}  {problems}")
    return "\n".join(lines)


def route_offline(mathjax: Path, blocked: list[str]):
    """A Playwright route handler: the local server passes, MathJax comes from ``mathjax``, the rest is refused."""
    def handle(route) -> None:
        url = route.request.url
        parsed = urlparse(url)
        if parsed.hostname in ("127.0.0.1", "localhost") or parsed.scheme in ("data", "blob"):
            route.continue_()
            return
        for marker in ("/mathjax@3/es5/", "/mathjax/es5/", "/mathjax@3.2.2/es5/"):
            if marker in parsed.path:
                local = mathjax / parsed.path.split(marker, 1)[1]
                if local.is_file():
                    route.fulfill(path=str(local))
                    return
        blocked.append(url)
        route.abort()
    return handle


def run(html: Path, pages: list[str], widths: list[str], out: Path | None, chromium: str, mathjax: Path,
        verbose: bool = True) -> tuple[list[PageResult], list[str]]:
    from playwright.sync_api import sync_playwright

    server, base = serve(html)
    blocked: list[str] = []
    results = []
    try:
        with sync_playwright() as p:
            # Playwright hides scrollbars by default: show them, as a reader's browser does, in the screenshots
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"],
                                        ignore_default_args=["--hide-scrollbars"])
            try:
                for width in widths:
                    context = browser.new_context(viewport={"width": WIDTHS[width], "height": HEIGHT[width]},
                                                  is_mobile=width == "phone", has_touch=width != "desktop",
                                                  device_scale_factor=1)
                    context.route("**/*", route_offline(mathjax, blocked))
                    for name in pages:
                        if not (html / f"{name}.html").exists():
                            raise SystemExit(f"{html}/{name}.html is missing: build the book first (make book)")
                        result = check_page(context, base, html, name, width, out)
                        results.append(result)
                        if verbose:
                            print(f"  checked {name} at {WIDTHS[width]} px", flush=True)
                    context.close()
            finally:
                browser.close()
    finally:
        server.shutdown()
    return results, sorted(set(blocked))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--html", default=str(ROOT / "_build" / "html"))
    parser.add_argument("--out", default=str(ROOT / "_build" / "page-check"), help="report.json and screenshots")
    parser.add_argument("--pages", default=None, help="comma-separated page names (default: the whole toc)")
    parser.add_argument("--widths", default="desktop,tablet,phone")
    parser.add_argument("--chromium", default=None, help="browser executable (default: chromium on PATH)")
    parser.add_argument("--mathjax", default=os.environ.get("MATHJAX_DIR", str(MATHJAX_DEFAULT)),
                        help="MathJax 3 es5 folder (default: tools/pages/node_modules/mathjax/es5)")
    args = parser.parse_args(argv)

    html = Path(args.html).resolve()
    if not (html / "index.html").exists():
        print(f"no built book at {html}: run `make book` (or `make test`) first", file=sys.stderr)
        return 2
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("no Chromium found: install Debian's package (apt-get install chromium) or pass --chromium",
              file=sys.stderr)
        return 2
    mathjax = Path(args.mathjax)
    if not (mathjax / "tex-mml-chtml.js").exists():
        print(f"no MathJax 3 at {mathjax}: run `npm ci --prefix tools/pages` (make check-pages does)",
              file=sys.stderr)
        return 2
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("Playwright is not installed (pip install -r requirements-test.txt)", file=sys.stderr)
        return 2

    pages = args.pages.split(",") if args.pages else toc_pages()
    widths = args.widths.split(",")
    unknown = [w for w in widths if w not in WIDTHS]
    if unknown:
        parser.error(f"unknown widths {unknown}; choose from {sorted(WIDTHS)}")
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    print(f"checking {len(pages)} pages of {html} at {', '.join(f'{WIDTHS[w]} px' for w in widths)} "
          f"({chromium}, MathJax from {mathjax})", flush=True)
    results, blocked = run(html, pages, widths, out, chromium, mathjax)
    table = summarize(results)
    print("\n" + table)
    if blocked:
        print(f"\n{len(blocked)} request(s) to other hosts were blocked (the book needs none to read):")
        for url in blocked[:10]:
            print("    " + url)
    (out / "report.json").write_text(json.dumps(
        {"results": [r.__dict__ for r in results], "blocked": blocked,
         "exceptions": {k: sorted(v) for k, v in EXCEPTIONS.items()}}, indent=1))
    (out / "summary.txt").write_text(table + "\n")
    failed = [(r, failures(r)) for r in results if failures(r)]
    n_pass = len(results) - len(failed)
    print(f"\nscreenshots and report.json in {out}")
    if failed:
        print("\nFAILED:")
        for r, why in failed:
            print(f"  {r.page} at {WIDTHS[r.width]} px: " + "; ".join(why))
    print(f"\npage checks: {n_pass} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
