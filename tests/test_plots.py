"""Figures that do not overstate: fixed colour scales, reference lines that stay visible."""

from __future__ import annotations

import pytest

from micro_rm.eval import plots

pytest.importorskip("matplotlib")


def test_heatmap_scale_is_zero_to_one_whatever_the_data_spans():
    # The bug: Topical-Chat's head accuracies 0.60-0.66 filled the whole colour range.
    plt = plots._pyplot()
    fig, ax = plt.subplots()
    try:
        plots._heatmap(fig, ax, [[0.60, 0.66], [0.61, 0.62]], ["head 0", "head 1"], ["a", "b"], "accuracy",
                       "RdBu", [(0, 1)])
        assert ax.images[0].get_clim() == (0.0, 1.0)
    finally:
        plt.close(fig)


def test_close_budget_curve_references_get_distinct_dashes(monkeypatch, tmp_path):
    # The bug: "micro stage 1" hid under the oracle's identical dashed line when the two were close.
    captured = {}
    real_close = plots._pyplot().close
    monkeypatch.setattr(plots._pyplot(), "close", lambda fig: captured.setdefault("fig", fig))
    results = {"budget_curve": {"budgets": [5, 10], "mean": [0.70, 0.72], "std": [None, 0.01],
                                "reference": {"micro stage 1": 0.726, "oracle": 0.727}}}
    plots.plot_budget_curve(results, tmp_path / "curve.png")
    ax = captured["fig"].axes[0]
    try:
        lines = {line.get_label(): line for line in ax.get_lines()}
        stage1, oracle = lines["micro stage 1 (0.726)"], lines["oracle (0.727)"]
        assert stage1.get_linestyle() != oracle.get_linestyle()
        assert oracle.get_zorder() > stage1.get_zorder() and oracle.get_linewidth() < stage1.get_linewidth()
    finally:
        real_close(captured["fig"])
