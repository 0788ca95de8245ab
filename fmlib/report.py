"""Showing results in a page: small tables, quiet glue of numbers, and a visible line for hidden checks.

A chapter prints results as a :func:`table` (an HTML table in the built page and in Colab, aligned text in a
terminal) instead of long ``print`` lines that overflow the text column; it glues the numbers its prose quotes
with :func:`glue` (plain Python numbers, as myst-nb's formatting needs); and a cell of asserts the reader need
not read is hidden and ends with :func:`checked`, which leaves one visible line, "✓ …", in the page.
"""

from __future__ import annotations

import html
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["Table", "table", "glue", "glue_figure", "checked", "plain_number"]


def plain_number(value: Any) -> Any:
    """``value`` as a plain Python ``int``/``float``/``bool`` when it is a number (NumPy or torch scalars,
    0-d arrays and one-element tensors included); anything else unchanged.

    Raises:
        ValueError: a tensor or array with more than one element.
    """
    if torch.is_tensor(value) or isinstance(value, np.ndarray):
        size = value.numel() if torch.is_tensor(value) else value.size
        if size != 1:
            shape = tuple(value.shape)
            raise ValueError(f"expected a single number, got an array of shape {shape}")
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value)  # type: ignore[arg-type]


def _format(value: Any, spec: str | None) -> str:
    value = plain_number(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return format(value, spec or ".4g")
    if isinstance(value, int) and not isinstance(value, bool) and spec:
        return format(value, spec)
    return str(value)


class Table:
    """A small table of results: ``columns`` (names) and ``rows`` (lists of already formatted strings).

    Displays as an HTML table in a notebook or built page (``_repr_html_``), as Markdown where that is
    preferred (``_repr_markdown_``) and as aligned text in a terminal (``str``). Build it with :func:`table`.
    """

    def __init__(self, columns: Sequence[str], rows: Sequence[Sequence[str]], caption: str | None = None) -> None:
        self.columns = [str(c) for c in columns]
        self.rows = [[str(v) for v in row] for row in rows]
        self.caption = caption

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in self.rows)
        caption = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return (f'<div class="fm-table-wrap"><table class="fm-table">{caption}<thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table></div>")

    def _repr_markdown_(self) -> str:
        def esc(v: str) -> str:
            return v.replace("|", "\\|")

        lines = ["| " + " | ".join(esc(c) for c in self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in self.rows]
        if self.caption:
            lines.insert(0, f"*{self.caption}*\n")
        return "\n".join(lines)

    def __str__(self) -> str:
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) if self.rows else len(c)
                  for i, c in enumerate(self.columns)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(cells, widths)))

        out = [line(self.columns), "  ".join("-" * w for w in widths)] + [line(r) for r in self.rows]
        if self.caption:
            out.insert(0, self.caption)
        return "\n".join(out)

    __repr__ = __str__


def table(
    rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]] | Mapping[str, Sequence[Any]],
    *,
    columns: Sequence[str] | None = None,
    formats: str | Mapping[str, str] | None = None,
    caption: str | None = None,
) -> Table:
    """A :class:`Table` of results, shown when it is the last expression of a cell (``display(table(...))``
    elsewhere).

    ``rows`` is a list of dicts (the keys of the first one are the columns unless ``columns`` is given), a list
    of sequences with ``columns``, or a dict of equal-length columns. Numbers (NumPy and torch scalars included)
    are formatted with ``formats``: one format spec for every number, or a dict column → spec (default
    ``".4g"`` for floats); strings are shown as they are.

    Raises:
        ValueError: rows of the wrong length, a dict of columns of unequal lengths, sequences without
            ``columns``, or an empty ``columns``.
    """
    if isinstance(rows, Mapping):
        names = list(rows.keys()) if columns is None else list(columns)
        lengths = {len(rows[c]) for c in names}
        if len(lengths) > 1:
            raise ValueError(f"the columns of a table must have equal lengths, got {sorted(lengths)}")
        n = lengths.pop() if lengths else 0
        records: list[Sequence[Any]] = [[rows[c][i] for c in names] for i in range(n)]
    else:
        rows = list(rows)
        if rows and isinstance(rows[0], Mapping):
            names = list(rows[0].keys()) if columns is None else list(columns)
            records = [[row[c] for c in names] for row in rows]  # type: ignore[index]
        else:
            if columns is None:
                raise ValueError("a table of sequences needs columns=[...]")
            names = list(columns)
            records = [list(r) for r in rows]  # type: ignore[arg-type]
            for r in records:
                if len(r) != len(names):
                    raise ValueError(f"a row has {len(r)} values for {len(names)} columns: {r!r}")
    if not names:
        raise ValueError("a table needs at least one column")
    specs = {c: (formats.get(c) if isinstance(formats, Mapping) else formats) for c in names}
    cells = [[_format(v, specs[c]) for c, v in zip(names, r)] for r in records]
    return Table(names, cells, caption)


def glue(**values: Any) -> None:
    """Glue each ``name=value`` for the prose (``{glue:text}`name``` in MyST), quietly (``display=False``).

    Numbers are converted to plain Python numbers first (:func:`plain_number`): NumPy and torch scalars break
    myst-nb's number formatting in a strict build. Outside a notebook (plain Python) it does nothing.
    """
    converted = {name: plain_number(v) for name, v in values.items()}
    try:
        from IPython import get_ipython
    except ImportError:
        return
    if get_ipython() is None:
        return
    from myst_nb import glue as nb_glue

    for name, value in converted.items():
        nb_glue(name, value, display=False)


def glue_figure(name: str, fig: Any) -> None:
    """Glue a matplotlib figure under ``name`` for a numbered, captioned ``{glue:figure}`` in the Markdown, and
    close it, so that it appears once, where the figure directive stands, and not also as the cell's output.

    Outside a notebook (plain Python) the figure is only closed.

    Raises:
        TypeError: ``fig`` is not a matplotlib figure.
    """
    from matplotlib.figure import Figure

    if not isinstance(fig, Figure):
        raise TypeError(f"glue_figure needs a matplotlib Figure, got {type(fig).__name__}")
    try:
        from IPython import get_ipython
    except ImportError:
        get_ipython = None  # type: ignore[assignment]
    if get_ipython is not None and get_ipython() is not None:
        from myst_nb import glue as nb_glue

        nb_glue(name, fig, display=False)
    import matplotlib.pyplot as plt

    plt.close(fig)


def checked(what: str, *, trained: bool = False) -> None:
    """Print "✓ ``what``": the one visible line of a hidden cell of asserts, which ran and passed.

    ``trained=True`` marks checks on trained models that a chapter skips in a smoke run (training capped by
    ``FMLIB_MAX_STEPS``, see :func:`fmlib.runtime.max_train_steps`, where an under-trained model cannot be held
    to the claim). In such a run the line says that the check was skipped instead of claiming it passed.
    """
    if trained:
        from fmlib.runtime import max_train_steps

        cap = max_train_steps()
        if cap is not None:
            print(f"– not checked in this smoke run (training capped at {cap} steps by FMLIB_MAX_STEPS): {what}")
            return
    print(f"✓ {what}")
