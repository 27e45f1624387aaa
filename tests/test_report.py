"""The report folder: files, numbers that equal results.json, bold best, optional sections, atomicity."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from micro_rm.errors import MicroRMError
from micro_rm.eval import plots, report
from micro_rm.eval.report import format_table, load_results, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ATTRS = ["academy", "business", "entertainment", "literature"]


def _method(values: list[float], supervision: str) -> dict:
    return {"mean": sum(values) / len(values), "per_attribute": dict(zip(ATTRS, values)), "supervision": supervision}


RESULTS = {
    "title": "DSP (4 domains), default backbone",
    "dataset": {"name": "dsp", "train_pairs": 7396, "test_pairs": 3032, "attributes": ATTRS},
    "settings": {"heads": 4, "backbone": "default", "budget": 50, "tau": "auto", "hyre_m": 16, "seeds": 5},
    "methods": {
        "single": _method([0.6, 0.54, 0.5612, 0.5661], "binary pairs"),
        "static": _method([0.6, 0.5444, 0.559, 0.566], "binary pairs"),
        "hyre": _method([0.70, 0.7216, 0.69, 0.7], "16 test labels / attribute"),
        "micro": _method([0.72, 0.7214, 0.7049, 0.7203], "B = 50 context pairs / attribute"),
        # The oracle is best on academy: it must not take the bold there.
        "oracle": _method([0.75, 0.71, 0.7, 0.74], "attribute labels (all train pairs)"),
    },
    "variants": [
        {"protocol": "prompt", "balance": "example", "stage1": 0.567, "stage2": 0.573, "tau": 0.001},
        {"protocol": "context", "balance": "marginal", "stage1": 0.716, "stage2": 0.716, "tau": 0.1},
    ],
    "head_attribute": {"attributes": ATTRS, "accuracy": [[0.72, 0.51, 0.50, 0.55], [0.52, 0.73, 0.49, 0.5],
                                                         [0.55, 0.5, 0.71, 0.52], [0.5, 0.52, 0.53, 0.74]]},
    "router_weights": {"attributes": ATTRS, "weights": [[0.9, 0.05, 0.03, 0.02], [0.1, 0.8, 0.05, 0.05],
                                                        [0.05, 0.05, 0.85, 0.05], [0.02, 0.03, 0.05, 0.9]]},
    "budget_curve": {"budgets": [5, 10, 20, 50, 100], "mean": [0.62, 0.66, 0.69, 0.716, 0.72],
                     "std": [0.03, 0.02, 0.012, 0.008, 0.005], "seeds": 5,
                     "reference": {"micro-stage1": 0.7, "oracle": 0.73}},
    "paper": {"single": 0.7632, "micro": 0.783, "ARMO 8B": 0.7108},
    "machine": "2-core CPU", "command": "micro-rm experiment configs/dsp.yaml", "seconds": 812.3,
}
FIGURES = ["head_attribute.png", "router_weights.png", "budget_curve.png"]


def _table(markdown: str, heading: str) -> list[list[str]]:
    """The cells of the first markdown table after ``heading`` (header row first, rule row dropped)."""
    lines = markdown.split(heading, 1)[1].splitlines()
    rows = [line for line in lines[lines.index(next(l for l in lines if l.startswith("|"))):]]
    rows = rows[:next((i for i, l in enumerate(rows) if not l.startswith("|")), len(rows))]
    return [[c.strip() for c in r.strip("|").split("|")] for i, r in enumerate(rows) if i != 1]


@pytest.fixture
def written(tmp_path):
    folder = write_report(RESULTS, tmp_path / "report")
    return folder, (folder / "report.md").read_text(encoding="utf-8")


def test_write_report_writes_results_report_and_three_pngs(written):
    folder, markdown = written
    assert json.loads((folder / "results.json").read_text()) == RESULTS
    for name in FIGURES:
        assert (folder / name).read_bytes()[:8] == PNG_SIGNATURE
        assert f"]({name})" in markdown  # linked relatively
    assert not list(folder.glob("*.tmp"))


def test_main_table_numbers_equal_results_json_rounded(written):
    _, markdown = written
    header, *rows = _table(markdown, "## Pairwise accuracy per attribute")
    assert header == ["method", *ATTRS, "Average", "Paper (avg)", "Supervision"]
    assert [r[0] for r in rows] == list(RESULTS["methods"])
    for name, *cells, paper, supervision in rows:
        method = RESULTS["methods"][name]
        expected = [method["per_attribute"][a] for a in ATTRS] + [method["mean"]]
        assert [float(c.strip("*")) for c in cells] == [round(v, 3) for v in expected]
        assert paper == (f"{RESULTS['paper'][name]:.3f}" if name in RESULTS["paper"] else "—")
        assert supervision == method["supervision"]
    assert "ARMO 8B 0.711" in markdown  # a paper row we have no method for is still shown


def test_best_label_free_value_per_column_is_bold(written):
    _, markdown = written
    _, *rows = _table(markdown, "## Pairwise accuracy per attribute")
    for j in range(1, len(ATTRS) + 2):
        ranked = [r for r in rows if r[0] != "oracle"]
        top = max(float(r[j].strip("*")) for r in ranked)
        assert {r[0] for r in rows if r[j].startswith("**")} == {r[0] for r in ranked if float(r[j].strip("*")) == top}
    micro = next(r for r in rows if r[0] == "micro")
    oracle = next(r for r in rows if r[0] == "oracle")
    assert micro[1] == "**0.720**" and oracle[1] == "0.750"  # oracle beats it but is a reference


def test_head_router_variants_and_budget_sections(written):
    _, markdown = written
    *_, best_row = _table(markdown, "## Stage-1 heads × attributes")
    assert best_row == ["best head", "head 0", "head 1", "head 2", "head 3"]
    assert "mean accuracy 0.725" in markdown  # (0.72 + 0.73 + 0.71 + 0.74) / 4
    router = _table(markdown, "## Router weights per attribute")
    assert router[1] == ["academy", "**0.900**", "0.050", "0.030", "0.020", "head 0"]
    variants = _table(markdown, "## Stage-1 protocol and regulariser")
    assert variants[2] == ["context", "marginal", "**0.716**", "**0.716**", "0.1"]
    budget = _table(markdown, "## Budget curve")
    assert budget[4] == ["50", "0.716 ± 0.008"]
    assert "`micro-rm experiment configs/dsp.yaml`" in markdown and "2-core CPU" in markdown


def test_missing_sections_write_no_plot_and_no_section(tmp_path):
    folder = write_report(RESULTS, tmp_path)  # an earlier full run in the same folder
    reduced = {k: v for k, v in RESULTS.items() if k not in ("budget_curve", "router_weights", "paper")}
    write_report(reduced, folder)
    markdown = (folder / "report.md").read_text()
    assert not (folder / "budget_curve.png").exists() and not (folder / "router_weights.png").exists()
    assert "## Budget curve" not in markdown and "## Router weights" not in markdown
    assert "Paper" not in markdown and "budget_curve.png" not in markdown
    assert (folder / "head_attribute.png").read_bytes()[:8] == PNG_SIGNATURE


def test_format_table_lists_every_method_and_its_mean():
    text = format_table(RESULTS)
    assert text.splitlines()[0].split() == ["method", "mean", *ATTRS]
    for name, method in RESULTS["methods"].items():
        line = next(l for l in text.splitlines() if l.split()[0] == name)
        assert line.split()[1] == f"{method['mean']:.3f}"


def test_failed_plot_leaves_previous_report_whole(tmp_path, monkeypatch):
    folder = tmp_path / "report"

    def broken(results, path):
        raise RuntimeError("disk full")

    monkeypatch.setitem(plots.PLOTS, "budget_curve", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(RESULTS, folder)
    assert not (folder / "results.json").exists() and not (folder / "report.md").exists()

    monkeypatch.undo()
    write_report(RESULTS, folder)
    before = {name: (folder / name).read_text() for name in ("results.json", "report.md")}
    changed = copy.deepcopy(RESULTS)
    changed["methods"]["micro"]["mean"] = 0.9
    monkeypatch.setitem(plots.PLOTS, "budget_curve", broken)
    with pytest.raises(RuntimeError):
        write_report(changed, folder)
    assert {name: (folder / name).read_text() for name in before} == before
    assert not list(folder.glob(".*.tmp"))


def test_numpy_values_are_written_as_plain_json(tmp_path):
    results = copy.deepcopy(RESULTS)
    results["methods"]["micro"]["mean"] = np.float32(0.7167)
    results["head_attribute"]["accuracy"] = np.array(RESULTS["head_attribute"]["accuracy"])
    folder = write_report(results, tmp_path)
    saved = load_results(folder)
    assert saved["head_attribute"] == RESULTS["head_attribute"]
    micro = next(r for r in _table((folder / "report.md").read_text(), "## Pairwise") if r[0] == "micro")
    assert micro[len(ATTRS) + 1].strip("*") == f"{saved['methods']['micro']['mean']:.3f}" == "0.717"


def test_without_matplotlib_the_tables_are_still_written(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "_can_plot", lambda: False)
    with pytest.warns(UserWarning, match="pip install matplotlib"):
        folder = write_report(RESULTS, tmp_path)
    assert not list(folder.glob("*.png")) and ".png" not in (folder / "report.md").read_text()


def test_load_results_takes_folder_or_file_and_names_missing_file(tmp_path, written):
    folder, _ = written
    assert load_results(folder) == load_results(folder / "results.json") == RESULTS
    with pytest.raises(MicroRMError, match="not found; `micro-rm experiment"):
        load_results(tmp_path / "nowhere")


def test_mismatched_matrix_is_refused_with_its_field(tmp_path):
    bad = copy.deepcopy(RESULTS)
    bad["head_attribute"]["accuracy"][2] = [0.5, 0.5]
    with pytest.raises(MicroRMError, match=r"head_attribute.accuracy has rows of lengths \[4, 4, 2, 4\]"):
        write_report(bad, tmp_path)
    with pytest.raises(MicroRMError, match="methods.micro.mean must be a number"):
        write_report({"methods": {"micro": {"per_attribute": {}}}}, tmp_path)
    assert not list(tmp_path.iterdir())
