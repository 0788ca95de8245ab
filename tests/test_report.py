"""fmlib.report: tables, plain numbers for glue, the visible line of a hidden check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmlib import report


@pytest.mark.parametrize("value, expected", [(np.float32(1.5), 1.5), (torch.tensor(2.0), 2.0),
                                             (torch.tensor([3]), 3), (np.int64(4), 4), (np.array(0.25), 0.25),
                                             ("text", "text"), (True, True), (7, 7)])
def test_plain_number_gives_python_numbers(value, expected):
    out = report.plain_number(value)
    assert out == expected and type(out) is type(expected)


def test_plain_number_rejects_arrays():
    with pytest.raises(ValueError, match="single number"):
        report.plain_number(torch.zeros(2))


def test_table_from_dicts_formats_numbers():
    t = report.table([{"path": "linear", "W2": np.float32(0.123456)}, {"path": "VP", "W2": torch.tensor(1e-5)}],
                     formats={"W2": ".3f"})
    assert t.columns == ["path", "W2"]
    assert t.rows == [["linear", "0.123"], ["VP", "0.000"]]
    html = t._repr_html_()
    assert "<table" in html and "<th>W2</th>" in html and "<td>linear</td>" in html
    md = t._repr_markdown_()
    assert md.splitlines()[0] == "| path | W2 |"
    text = str(t)
    assert "linear" in text and "0.123" in text


def test_table_from_columns_and_sequences():
    a = report.table({"n": [1, 2], "err": [0.5, 0.25]})
    b = report.table([(1, 0.5), (2, 0.25)], columns=["n", "err"])
    assert a.rows == b.rows == [["1", "0.5"], ["2", "0.25"]]


@pytest.mark.parametrize("bad, match", [({"a": [1], "b": [1, 2]}, "equal lengths"), ([(1, 2)], "columns=")])
def test_table_rejects_bad_shapes(bad, match):
    with pytest.raises(ValueError, match=match):
        report.table(bad)


def test_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="2 values for 3 columns"):
        report.table([(1, 2)], columns=["a", "b", "c"])


def test_table_escapes_html():
    assert "&lt;b&gt;" in report.table([{"x": "<b>"}])._repr_html_()


def test_checked_prints_one_line(capsys):
    report.checked("the loss is finite")
    assert capsys.readouterr().out == "✓ the loss is finite\n"


def test_checked_trained_says_skipped_in_a_smoke_run(capsys, monkeypatch):
    monkeypatch.delenv("FMLIB_MAX_STEPS", raising=False)
    report.checked("the model is good", trained=True)
    assert capsys.readouterr().out == "✓ the model is good\n"
    monkeypatch.setenv("FMLIB_MAX_STEPS", "20")
    report.checked("the model is good", trained=True)
    out = capsys.readouterr().out
    assert not out.startswith("✓") and "not checked" in out and "20 steps" in out
    report.checked("an exact identity")  # not about a trained model: still a check that passed
    assert capsys.readouterr().out == "✓ an exact identity\n"


def test_glue_outside_a_notebook_is_quiet():
    report.glue(a=np.float64(1.0))  # no IPython: nothing happens, nothing raises


def test_glue_figure_closes_the_figure():
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    report.glue_figure("fig-x", fig)
    assert not plt.fignum_exists(fig.number)
    with pytest.raises(TypeError, match="Figure"):
        report.glue_figure("fig-x", "not a figure")
