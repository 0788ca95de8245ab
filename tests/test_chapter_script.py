"""tools/chapter_script.py: a chapter as a plain script runs its cells in order, with or without IPython, and a
failing assertion makes it exit 1 naming the cell."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _myst import MYST_HEADER

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import chapter_script  # noqa: E402

CHAPTER = MYST_HEADER + """
# A small chapter

```{code-cell} ipython3
%matplotlib inline
import matplotlib.pyplot as plt
from IPython.display import Markdown
from myst_nb import glue

x = 3
```

Some prose.

```{code-cell} ipython3
plt.plot([0, 1], [0, x])
plt.show()
display(Markdown("| a | b |"))
glue("three", float(x), display=False)
assert x == EXPECTED, "planted"
```
"""

# runs the script with IPython importable or blocked (the GPU machine has no IPython)
RUNNER = "import sys, runpy\nif {block}: sys.modules['IPython'] = None\nrunpy.run_path({path!r}, run_name='__main__')"


def run_script(tmp_path: Path, expected: int, block_ipython: bool) -> subprocess.CompletedProcess:
    chapter = tmp_path / "chapter.md"
    chapter.write_text(CHAPTER.replace("EXPECTED", str(expected)))
    script = chapter_script.export(chapter, tmp_path / "out" / "chapter.py")
    code = RUNNER.format(block=block_ipython, path=str(script))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)


@pytest.mark.parametrize("block_ipython", [False, True])
def test_cells_run_in_order_and_glue_prints(tmp_path, block_ipython):
    result = run_script(tmp_path, 3, block_ipython)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[glue] three = 3.0" in result.stdout
    if block_ipython:  # the stand-in display prints the Markdown's text
        assert "| a | b |" in result.stdout
    assert "cell   1:" in result.stdout and "cell   3:" in result.stdout and "total:" in result.stdout


def test_a_failing_assertion_exits_1_naming_the_cell(tmp_path):
    result = run_script(tmp_path, 4, block_ipython=True)
    assert result.returncode == 1
    assert "cell   3: FAILED" in result.stdout and "AssertionError: planted" in result.stderr


def test_magics_are_dropped_and_sources_compile(tmp_path):
    chapter = tmp_path / "chapter.md"
    chapter.write_text(CHAPTER)
    cells = chapter_script.code_cells(chapter)
    assert [index for index, _ in cells] == [1, 3]
    assert not any(line.lstrip().startswith("%") for _, src in cells for line in src.splitlines())
