#!/usr/bin/env python3
"""Build the book strictly, execute only what is stale (in parallel), and say which chapter failed.

    python tools/build_book.py [--profile quick|full|auto] [--fresh | --fresh-cache] [--book-dir book]

* runs ``jupyter-book build <book> -W --keep-going``. After a build with no warning (the marker
  ``_build/build-ok``, kept by the engine), it is incremental, as plain ``jupyter-book build book/`` is: Sphinx re-reads the
  changed pages and those whose chapter the engine re-executed; a -W build with no warning has no warning to
  hide. Otherwise (a first build, a failed one, ``--fresh``) everything in ``_build`` but the execution cache
  and the timings is removed and ``--all`` re-reads every page;
* chapters are executed by tools/book_engine.py (a Sphinx extension listed in ``_config.yml``): only those
  whose key (code cells, fmlib's files, profile, ``FMLIB_*`` settings, package versions) changed since
  their cached outputs were made, several at once, longest first. ``_build/.jupyter_cache`` (the outputs)
  and ``_build/fmbook-timings.json`` (the queue order) are kept between builds;
* ``--fresh`` also removes the execution cache: every chapter executes;
* ``--fresh-cache`` (``make test``, CI) is ``--fresh`` with ``FMLIB_CACHE_DIR`` at an empty folder inside
  _build, so every model is trained in this build; otherwise the user's cache (``~/.cache/fmlib``) is reused;
* sets ``FMLIB_PROFILE`` for the notebook kernels (``auto`` leaves the choice to fmlib: full on a GPU);
* sets ``FMLIB_PROGRESS=summary`` unless it is set: a built page shows one line per training run, not the
  frames of a progress bar (nobody watches the kernels' stderr during a build);
* on failure, prints for each chapter whose execution failed its name and the end of its traceback
  (from ``_build/html/reports``), and the warning lines of the log; exits non-zero;
* prints the engine's timing table (per chapter: executed now or from the cache) and the whole build's time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from book_engine import OK_MARKER, TIMINGS_FILE  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("quick", "full", "auto"), default="auto")
    parser.add_argument("--fresh", action="store_true", help="execute every chapter (drop the execution cache)")
    parser.add_argument("--fresh-cache", action="store_true",
                        help="--fresh, and train every model in this build (an empty model cache)")
    parser.add_argument("--book-dir", default=str(ROOT / "book"))
    parser.add_argument("--log", default=None, help="also write the full build log here")
    args = parser.parse_args(argv)

    book = Path(args.book_dir).resolve()
    config = next((d / "_config.yml" for d in (book, *book.parents) if (d / "_config.yml").exists()), None)
    if config is None:
        print(f"no _config.yml in {book} or above it", file=sys.stderr)
        return 2
    build = config.parent / "_build"  # where jupyter-book puts it: beside the _config.yml it found
    fresh = args.fresh or args.fresh_cache
    marker = build / OK_MARKER  # tools/book_engine.py removes it when a build starts, writes it if no warning
    incremental = marker.exists() and not fresh
    if not incremental:
        clean_build(build, keep_outputs=not fresh)

    env = dict(os.environ)
    if args.profile != "auto":
        env["FMLIB_PROFILE"] = args.profile
    if args.fresh_cache:
        env["FMLIB_CACHE_DIR"] = str(build / "fmlib-cache")
    # the kernel must draw figures into the page: an inherited MPLBACKEND=Agg would silently drop them
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    env.setdefault("FMLIB_PROGRESS", "summary")

    jb = shutil.which("jupyter-book", path=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""))
    if jb is None:
        print("jupyter-book is not installed in this environment (pip install -r requirements.txt)", file=sys.stderr)
        return 2
    cmd = [jb, "build", str(book), "-W", "--keep-going", "--path-output", str(config.parent)]
    cmd += [] if incremental else ["--all"]
    print(f"$ {' '.join(cmd)}   (FMLIB_PROFILE={env.get('FMLIB_PROFILE', 'auto')}, "
          f"FMLIB_CACHE_DIR={env.get('FMLIB_CACHE_DIR', 'default')})", flush=True)

    start, start_time = time.perf_counter(), time.time()
    lines: list[str] = []
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1, cwd=ROOT) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
        code = proc.wait()
    elapsed = time.perf_counter() - start
    log = "".join(lines)
    if args.log:
        Path(args.log).write_text(log)

    print("\n" + "=" * 78)
    timings = build / TIMINGS_FILE
    if timings.exists() and timings.stat().st_mtime >= start_time:
        print(json.loads(timings.read_text())["table"])
    print(f"whole build (wall clock): {elapsed:.1f} s (profile {env.get('FMLIB_PROFILE', 'auto')})")

    failed = sorted((build / "html" / "reports").glob("**/*.err.log")) if (build / "html" / "reports").exists() else []
    warnings = [ln.rstrip() for ln in lines
                if re.search(r"\b(WARNING|ERROR)\b", ln) and "Kernel is running over TCP" not in ln]
    if failed:
        print(f"\nFAILED: {len(failed)} chapter(s) raised an error while executing:")
        for report in failed:
            chapter = report.name.removesuffix(".err.log")
            text = re.sub(r"\x1b\[[0-9;]*m", "", report.read_text(errors="replace"))
            tail = text.strip().splitlines()[-25:]
            print(f"\n--- chapter {chapter} ({book.name}/{chapter}.md) ---")
            print("\n".join("    " + t for t in tail))
    if warnings:
        print(f"\n{len(warnings)} warning/error line(s) in the build log (a -W build fails on any):")
        for w in warnings[:40]:
            print("    " + re.sub(r"\x1b\[[0-9;]*m", "", w))
    missing = missing_figures(book, build / "html")
    if missing:
        print("\nFAILED: these chapters call plt.show() but their pages hold no figure "
              "(is MPLBACKEND set to a non-inline backend?): " + ", ".join(missing))
    intro = build / "html" / "intro.html"
    intro_md = book / "intro.md"
    if intro_md.exists() and "Notation" in intro_md.read_text() and code == 0 and not notation_table_rendered(intro):
        missing.append("intro (no rendered notation table)")
        print(f"\nFAILED: {intro} does not contain the notation table")
    if code != 0 or failed or missing:
        print(f"\nBOOK BUILD FAILED (jupyter-book exit code {code}).")
        marker.unlink(missing_ok=True)
        return code or 1
    print("\nBook built: " + str(build / "html" / "index.html"))
    return 0


def clean_build(build: Path, keep_outputs: bool) -> None:
    """Empty ``build``, keeping the timings (queue order) and, if ``keep_outputs``, the execution cache."""
    keep = {TIMINGS_FILE} | ({".jupyter_cache"} if keep_outputs else set())
    build.mkdir(parents=True, exist_ok=True)
    for entry in build.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def missing_figures(book: Path, html: Path) -> list[str]:
    """Chapters whose source shows a matplotlib figure but whose built page contains no image."""
    missing = []
    for md in sorted(book.glob("*.md")):
        page = html / (md.stem + ".html")
        if "plt.show()" in md.read_text() and page.exists() and "<img" not in page.read_text(errors="replace"):
            missing.append(md.stem)
    return missing


def notation_table_rendered(page: Path) -> bool:
    """The intro page exists, has a "Notation" section, and holds an HTML table after it."""
    if not page.exists():
        return False
    text = page.read_text(errors="replace")
    at = text.find("Notation")
    return at >= 0 and "<table" in text[at:]


if __name__ == "__main__":
    sys.exit(main())
