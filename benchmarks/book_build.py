#!/usr/bin/env python3
"""Time the book build: cold, warm with nothing changed, and after a prose-only edit; print a table.

    python benchmarks/book_build.py [--profile quick|full] [--skip-cold] [--chapter fm_vs_cfm]

1. **cold**: ``tools/build_book.py --fresh-cache`` (what ``make test`` runs): empty ``_build``, empty model
   cache, every chapter executed (concurrently, by tools/book_engine.py), every model trained;
2. **warm**: ``tools/build_book.py`` again (what ``make book`` runs) with nothing changed: every chapter's
   outputs come from the execution cache;
3. **prose edit**: a paragraph is added to one chapter's Markdown (and removed afterwards): the page is
   re-rendered from the cache, nothing executes.

Steps 2 and 3 are also timed with plain ``jupyter-book build book/ -W --keep-going`` (as readers run it;
it finds the root ``_config.yml`` and shares ``_build`` and its execution cache with ``make book``).
For each: the wall time, the chapters executed and the sum of their execution times. Targets for the quick
profile on a 2-core CPU: cold <= 10 min for the whole book, warm <= 30 s, prose edit <= 60 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from book_engine import TIMINGS_FILE  # noqa: E402

EDIT = "\n\nA paragraph added by benchmarks/book_build.py to time a prose-only edit.\n"


def run(label: str, cmd: list[str], build: Path, env: dict) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    info = json.loads((build / TIMINGS_FILE).read_text()) if (build / TIMINGS_FILE).exists() else {}
    executed = [c for c in info.get("chapters", []) if not c["cached"]]
    row = {"build": label, "wall": wall, "executed": len(executed), "of": len(info.get("chapters", [])),
           "sum": sum(c["seconds"] for c in executed), "ok": proc.returncode == 0}
    if proc.returncode != 0:
        print(f"{label}: FAILED (exit {proc.returncode})\n{(proc.stdout + proc.stderr)[-3000:]}")
    print(f"  {label}: {wall:.1f} s", flush=True)
    if info.get("table"):
        print("    " + info["table"].replace("\n", "\n    "), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("quick", "full"), default="quick")
    parser.add_argument("--skip-cold", action="store_true", help="start from the present _build")
    parser.add_argument("--chapter", default="fm_vs_cfm", help="the chapter whose prose is edited")
    args = parser.parse_args()
    env = dict(os.environ, FMLIB_PROFILE=args.profile)
    build_book = [sys.executable, str(ROOT / "tools" / "build_book.py"), "--profile", args.profile]
    jb = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT / "book"), "-W", "--keep-going"]
    build = ROOT / "_build"  # plain `jupyter-book build book/` finds ../_config.yml and writes here too
    chapter = ROOT / "book" / f"{args.chapter}.md"
    original = chapter.read_text()

    rows = []
    print(f"book build, profile={args.profile}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    if not args.skip_cold:
        rows.append(run("cold (make test's build)", build_book + ["--fresh-cache"], build, env))
    run("(make book: brings _build up to date)", build_book, build, env)
    for name, cmd in (("make book", build_book), ("jupyter-book build", jb)):
        rows.append(run(f"warm, nothing changed ({name})", cmd, build, env))
        try:
            chapter.write_text(original + EDIT)
            rows.append(run(f"prose edit of {args.chapter} ({name})", cmd, build, env))
        finally:
            chapter.write_text(original)
    run("(make book: back to the unedited chapter)", build_book, build, env)

    print(f"\nbook build, profile={args.profile}, {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}, load average now {os.getloadavg()[0]:.1f}")
    print(f"{'build':<48}{'wall (s)':>10}{'executed':>10}{'exec sum (s)':>14}  status")
    for r in rows:
        print(f"{r['build']:<48}{r['wall']:>10.1f}{r['executed']:>6}/{r['of']:<3}{r['sum']:>14.1f}  "
              f"{'ok' if r['ok'] else 'FAILED'}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
