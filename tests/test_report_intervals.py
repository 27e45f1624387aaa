"""The report's intervals: a 95% CI column, per-attribute intervals, paired differences whose
interval includes 0 marked, the timing split and the sample-std note."""

from __future__ import annotations

from micro_rm.eval.report import format_table, render_report

RESULTS = {
    "methods": {
        "single-ctx": {"mean": 0.601, "per_attribute": {"a": 0.58, "b": 0.622}, "ci95": [0.585, 0.617],
                       "per_attribute_ci95": {"a": [0.56, 0.60], "b": [0.60, 0.644]}},
        "micro-stage1": {"mean": 0.726, "per_attribute": {"a": 0.70, "b": 0.752}, "ci95": [0.70, 0.75],
                         "per_attribute_ci95": {"a": [0.67, 0.73], "b": [0.72, 0.78]}},
        "micro": {"mean": 0.722, "per_attribute": {"a": 0.69, "b": 0.754}, "ci95": [0.698, 0.746],
                  "per_attribute_ci95": {"a": [0.66, 0.72], "b": [0.72, 0.78]}},
    },
    "differences": [
        {"method": "micro", "against": "single-ctx", "difference": 0.121, "ci95": [0.1, 0.142],
         "excludes_zero": True},
        {"method": "micro", "against": "micro-stage1", "difference": -0.004, "ci95": [-0.009, 0.002],
         "excludes_zero": False},
    ],
    "bootstrap": {"unit": "test prompt", "resamples": 1000, "level": 0.95, "seed": 0},
    "budget_curve": {"budgets": [5, 50], "mean": [0.69, 0.722], "std": [0.012, None], "std_ddof": 1, "seeds": 5},
    "timing": {"encode": 0.4, "stage 1": 41.0, "stage 2": 9.5, "curves": 20.2, "other": 1.1},
}


def _row(markdown: str, heading: str, first_cell: str) -> list[str]:
    table = markdown.split(heading, 1)[1]
    line = next(l for l in table.splitlines() if l.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_main_table_and_terminal_table_carry_the_interval():
    markdown = render_report(RESULTS)
    assert _row(markdown, "## Pairwise accuracy per attribute", "micro")[3:5] == ["0.722", "[0.698, 0.746]"]
    assert "1000 resamples of the test prompts" in markdown
    line = next(l for l in format_table(RESULTS).splitlines() if l.startswith("micro "))
    assert line.split()[1:4] == ["0.722", "[0.698,", "0.746]"]


def test_differences_whose_interval_includes_zero_are_marked():
    markdown = render_report(RESULTS)
    assert _row(markdown, "## Paired differences", "micro − single-ctx") == [
        "micro − single-ctx", "+0.121", "[0.100, 0.142]", "no"]
    assert _row(markdown, "## Paired differences", "micro − micro-stage1") == [
        "micro − micro-stage1", "−0.004", "[−0.009, 0.002]", "**yes: not resolved**"]


def test_per_attribute_intervals_timing_and_sample_std():
    markdown = render_report(RESULTS)
    assert _row(markdown, "## 95% intervals per attribute", "single-ctx") == ["single-ctx", "[0.560, 0.600]",
                                                                            "[0.600, 0.644]"]
    assert "Time: encode 0.4 s · stage 1 41.0 s · stage 2 9.5 s · curves 20.2 s · other 1.1 s" in markdown
    assert "| 50 | 0.722 |" in markdown and "Mean ± sample std (ddof = 1)" in markdown
