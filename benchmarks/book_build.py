#!/usr/bin/env python3
"""Time a fresh, strict build of the whole book and print a table of per-chapter execution times.

    python benchmarks/book_build.py [--profile quick|full]

Runs tools/build_book.py (empty _build, -W --keep-going, fresh model cache so every model is trained) and
reports each chapter's execution time and the total. The goal for the quick profile on a 2-core CPU is a
whole-book build of at most 10 minutes.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("quick", "full"), default="quick")
    args = parser.parse_args()
    log = ROOT / "_build-benchmark.log"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "build_book.py"), "--profile", args.profile,
                           "--fresh-cache", "--log", str(log)], capture_output=True, text=True)
    total = time.perf_counter() - start
    text = log.read_text() if log.exists() else proc.stdout
    log.unlink(missing_ok=True)
    rows = [(Path(m.group(1)).name, float(m.group(2)))
            for m in re.finditer(r"(\S+?)\.md: Executed notebook in ([\d.]+) seconds", text)]
    print(f"book build, profile={args.profile}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
    print(f"{'chapter':<28}{'execution (s)':>15}")
    for name, secs in rows:
        print(f"{name:<28}{secs:>15.1f}")
    print(f"{'sum of chapters':<28}{sum(s for _, s in rows):>15.1f}")
    print(f"{'whole build (wall clock)':<28}{total:>15.1f}")
    print("status:", "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
