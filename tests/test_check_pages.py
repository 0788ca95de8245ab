"""The browser check of the built book (tools/check_pages.py): its measurements on pages whose answer is known.

The in-browser tests need Chromium and Playwright (``make check-pages`` sets them up); without them they skip.
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import check_pages  # noqa: E402


def _png(path: Path, width: int, height: int, dpi: float | None) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\xff\xff\xff" * width for _ in range(height))
    body = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    if dpi is not None:
        ppm = round(dpi / 0.0254)
        body += chunk(b"pHYs", struct.pack(">IIB", ppm, ppm, 1))
    body += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def test_png_dpi_reads_the_resolution_matplotlib_writes(tmp_path):
    assert check_pages.png_dpi(_png(tmp_path / "a.png", 4, 3, 200)) == pytest.approx(200, abs=0.01)
    assert check_pages.png_dpi(_png(tmp_path / "b.png", 4, 3, None)) is None
    (tmp_path / "c.png").write_bytes(b"not a png")
    assert check_pages.png_dpi(tmp_path / "c.png") is None


def test_png_dpi_of_a_real_matplotlib_retina_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(6.9, 2))
    fig.savefig(tmp_path / "f.png", dpi=200)
    plt.close(fig)
    assert check_pages.png_dpi(tmp_path / "f.png") == pytest.approx(200, abs=0.1)


def test_figure_scale_is_relative_to_the_design_width():
    # a 6.9 in figure: 1380 px at 200 dpi or 690 px at 100 dpi, shown 690 px wide, is at scale 1
    assert check_pages.figure_scale(690, 1380, 200) == pytest.approx(1.0)
    assert check_pages.figure_scale(690, 690, 100) == pytest.approx(1.0)
    assert check_pages.figure_scale(690, 690, None) == pytest.approx(1.0)
    # a 6-panel strip 19.7 in wide squeezed into the column
    assert check_pages.figure_scale(690, 1970, 100) == pytest.approx(0.35, abs=0.01)
    with pytest.raises(ValueError):
        check_pages.figure_scale(10, 0, 100)


def test_toc_pages_lists_root_and_chapters():
    pages = check_pages.toc_pages()
    assert pages[0] == "intro"
    assert "bibliography" in pages and "building" in pages


def test_exceptions_name_pages_of_the_toc():
    stale = set(check_pages.EXCEPTIONS) - set(check_pages.toc_pages())
    assert not stale, f"EXCEPTIONS names pages that are not in the toc: {sorted(stale)}"


def _browser():
    chromium = check_pages.find_chromium(None)
    if chromium is None:
        pytest.skip("no Chromium here (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    return chromium, sync_api


SYNTHETIC = """<!doctype html><html><head><style>
body { margin: 0; } article.bd-article { width: 500px; padding: 0 10px; overflow: hidden; }
pre { margin: 4px 0; white-space: pre; } td { white-space: nowrap; } .scroll { overflow-x: auto; } .cut { overflow: hidden; }
</style></head><body><article class="bd-article">
<div class="cell"><div class="cell_input"><pre id="short">x = 1</pre></div></div>
<div class="cell"><div class="cell_input"><pre class="cut">{long}</pre></div></div>
<div class="cell"><div class="cell_input"><pre class="scroll">{long}</pre></div></div>
<div class="cell"><div class="cell_output"><div class="output stream"><pre>{long}</pre></div></div></div>
<div class="pst-scrollable-table-container scroll"><table><tr><td>{long}</td></tr></table></div>
<table><tr><td>{long}</td></tr></table>
<div class="math"><mjx-container display="true"><mjx-merror data-mjx-error="Undefined control sequence \\foo">
\\foo</mjx-merror></mjx-container></div>
<p><span class="math">\\(x\\)</span></p>
</article></body></html>
""".replace("{long}", "y = " + "1 + " * 60 + "1")


def test_measure_tells_fitting_scrollable_and_clipped_blocks_apart():
    chromium, sync_api = _browser()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 800, "height": 600})
            page.set_content(SYNTHETIC)
            data = page.evaluate(check_pages.MEASURE_JS)
        finally:
            browser.close()
    assert data["colWidth"] == 500
    got = [(b["kind"], b["status"]) for b in data["blocks"]]
    assert got == [("code", "fits"), ("code", "clipped"), ("code", "scrollable"), ("output", "clipped"),
                   ("table", "scrollable"), ("table", "clipped"), ("math", "fits")], got
    assert data["math"]["errors"] == ["Undefined control sequence \\foo"]
    assert data["math"]["total"] == 2 and len(data["math"]["unrendered"]) == 1  # the inline \(x\)


def test_failures_apply_the_exceptions(monkeypatch):
    monkeypatch.setitem(check_pages.EXCEPTIONS, "probability_paths", {"figure-scale"})
    result = check_pages.PageResult("probability_paths", "desktop",
                                    figures=[{"scale": 0.3}], math={"errors": [], "unrendered": []})
    assert check_pages.failures(result) == []  # figure scale waived for this chapter
    result.page = "a_new_chapter"
    assert check_pages.failures(result) == [f"1 figure(s) shown below {check_pages.MIN_FIGURE_SCALE}x"]
    result.blocks = [{"status": "clipped"}]
    assert "1 block(s) cut off or spilling past the column" in check_pages.failures(result)
