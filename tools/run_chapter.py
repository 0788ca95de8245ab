#!/usr/bin/env python3
"""Execute one chapter outside the book build, to iterate on it quickly.

    python tools/run_chapter.py book/fm_vs_cfm.md [--profile quick|full] [--out /tmp/executed.ipynb]

Runs every cell with cwd book/ (as the build does), prints each cell's wall-clock time and the traceback of
the first failing cell, and writes the executed notebook (with outputs) to ``--out`` for inspection. The
build itself is tools/build_book.py; this is a convenience for authors.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chapter")
    parser.add_argument("--profile", choices=("quick", "full"), default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--timeout", type=int, default=1200)
    args = parser.parse_args(argv)

    md = Path(args.chapter).resolve()
    if args.profile:
        os.environ["FMLIB_PROFILE"] = args.profile
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # figures go into the outputs
    nb = jupytext.read(md)
    client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(md.parent)}})
    total = time.perf_counter()
    code = 0
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            start = time.perf_counter()
            try:
                client.execute_cell(cell, index)
            except CellExecutionError as err:
                print(f"cell {index}: FAILED after {time.perf_counter() - start:.1f} s\n{err}")
                code = 1
                break
            first = cell.source.strip().splitlines()[0][:70] if cell.source.strip() else ""
            print(f"cell {index:3d}: {time.perf_counter() - start:7.1f} s  {first}", flush=True)
    print(f"total: {time.perf_counter() - total:.1f} s")
    if args.out:
        nbformat.write(nb, args.out)
        print(f"executed notebook written to {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
