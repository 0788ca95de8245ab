#!/usr/bin/env python3
"""Write (or check) the output-free .ipynb twin of every MyST notebook chapter, for Colab.

    python tools/sync_notebooks.py          # rewrite book/*.ipynb from book/*.md
    python tools/sync_notebooks.py --check  # exit 1 and list the chapters whose .ipynb is out of date

The .md file is the source; the .ipynb is generated with ``jupytext --to ipynb --update`` (byte-stable) and
committed without outputs, so that Colab's launch button can open it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"


def chapters(book: Path = BOOK) -> list[Path]:
    """The MyST notebooks of the book: .md files whose front matter has a kernelspec."""
    found = []
    for md in sorted(book.glob("*.md")):
        head = md.read_text(encoding="utf-8").split("\n---", 1)[0]
        if md.read_text(encoding="utf-8").startswith("---") and "kernelspec:" in head:
            found.append(md)
    return found


def render(md: Path, out: Path) -> None:
    """Write the ipynb of ``md`` to ``out`` (updating ``out`` in place if it exists)."""
    jupytext = shutil.which("jupytext", path=str(Path(sys.executable).parent)) or shutil.which("jupytext")
    if jupytext is None:
        raise SystemExit("jupytext is not installed (pip install -r requirements.txt)")
    cmd = [jupytext, "--quiet", "--to", "ipynb", "--update", "--output", str(out), str(md)]
    if not out.exists():
        cmd.remove("--update")
    subprocess.run(cmd, check=True)


def out_of_date(md: Path) -> bool:
    """True when the committed twin differs from what jupytext writes now (or is missing)."""
    twin = md.with_suffix(".ipynb")
    if not twin.exists():
        return True
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / twin.name
        shutil.copy(twin, fresh)
        render(md, fresh)
        return fresh.read_bytes() != twin.read_bytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    stale = []
    for md in chapters():
        if args.check:
            if out_of_date(md):
                stale.append(md)
        else:
            render(md, md.with_suffix(".ipynb"))
            print(f"wrote {md.with_suffix('.ipynb').relative_to(ROOT)}")
    if stale:
        print("out of date (run python tools/sync_notebooks.py):", *[str(s.relative_to(ROOT)) for s in stale])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
