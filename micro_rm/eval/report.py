"""The experiment's report folder: ``results.json``, and ``report.md`` and the figures rendered from
it alone. The main table has the shape of the paper's Tables 2–3.

>>> from micro_rm.eval.report import write_report, load_results, format_table  # doctest: +SKIP
>>> folder = write_report(results, "runs/dsp")  # doctest: +SKIP
>>> print(format_table(load_results(folder)))  # doctest: +SKIP
method   mean   academy  business  ...
single   0.567    0.600     0.540  ...
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from micro_rm.atomic import atomic_open, json_default
from micro_rm.errors import MicroRMError
from micro_rm.eval.plots import best_head_per_attribute, write_plots

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
# Rows trained with attribute labels: an upper reference, shown but never bolded as "best",
# otherwise it would take every bold cell and hide which label-free method wins.
REFERENCE_METHODS = frozenset({"oracle"})
MISSING = "—"


# ---------------------------------------------------------------- reading and checking
def check_results(results: dict, where: str = "results") -> None:
    """Refuse a results dict whose sections disagree in shape, naming the field and the fix: checked
    once here, so that rendering and plotting can trust the data."""
    methods = results.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise MicroRMError(f"{where}: `methods` is missing or empty; expected "
                           "{name: {\"mean\": accuracy, \"per_attribute\": {attribute: accuracy}}}")
    for name, row in methods.items():
        if not isinstance(row, dict) or not isinstance(row.get("mean"), (int, float)):
            raise MicroRMError(f"{where}: methods.{name}.mean must be a number, got "
                               f"{row.get('mean') if isinstance(row, dict) else row!r}")
    matrix = results.get("head_attribute")
    if matrix:
        _check_matrix(matrix, "accuracy", f"{where}: head_attribute", rows=None,
                      cols=len(matrix.get("attributes") or []), fix="one accuracy per attribute in every row")
    matrix = results.get("router_weights")
    if matrix:
        _check_matrix(matrix, "weights", f"{where}: router_weights", rows=len(matrix.get("attributes") or []),
                      cols=None, fix="one row per attribute, one weight per head in every row")
    curve = results.get("budget_curve")
    if curve:
        for key in ("mean", "std"):
            if key in curve and len(curve[key]) != len(curve["budgets"]):
                raise MicroRMError(f"{where}: budget_curve.{key} has {len(curve[key])} values but budget_curve."
                                   f"budgets has {len(curve['budgets'])}; give one value per budget")


def _check_matrix(section: dict, key: str, where: str, *, rows: int | None, cols: int | None, fix: str) -> None:
    """``section[key]`` is a non-empty matrix of ``rows`` × ``cols`` (None: any rows / as wide as row 0)."""
    matrix = section.get(key)
    if not section.get("attributes") or not matrix:
        raise MicroRMError(f"{where}: needs non-empty `attributes` and `{key}`, got keys {sorted(section)}")
    cols = len(matrix[0]) if cols is None else cols
    if (rows is not None and len(matrix) != rows) or any(len(row) != cols for row in matrix):
        raise MicroRMError(f"{where}.{key} has rows of lengths {[len(r) for r in matrix]}, expected "
                           f"{'?' if rows is None else rows} × {cols}; give {fix}")


def load_results(path: str | Path) -> dict:
    """Read and check ``results.json``, given the file or the report folder that holds it."""
    path = Path(path)
    file = path / RESULTS_FILE if path.is_dir() else path
    if not file.is_file():
        raise MicroRMError(f"{file}: not found; `micro-rm experiment CONFIG.yaml --out DIR` writes DIR/{RESULTS_FILE}")
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MicroRMError(f"{file} line {exc.lineno}: not valid JSON ({exc.msg}); rewrite it with write_report") from None
    check_results(results, where=str(file))
    return results


# ---------------------------------------------------------------- formatting helpers
def _acc(value: float | None) -> str:
    """An accuracy to 3 decimals, the precision of the paper's tables."""
    return MISSING if value is None else f"{value:.3f}"


def _interval(ci: Sequence[float] | None) -> str:
    """A 95% interval as "[lo, hi]" at the tables' precision, negative ends with a minus sign."""
    return MISSING if not ci else f"[{_signed(ci[0], plus='')}, {_signed(ci[1], plus='')}]"


def _signed(value: float, plus: str = "+") -> str:
    """A number to 3 decimals with its sign: +0.043, −0.004 (``plus`` is what positives get)."""
    return ("−" if value < 0 else plus) + f"{abs(value):.3f}"


def _best(values: Sequence[float | None]) -> set[int]:
    """Indices holding the largest value as displayed (3 decimals), so visible ties are all bold."""
    shown = {i: round(v, 3) for i, v in enumerate(values) if v is not None}
    return {i for i, v in shown.items() if v == max(shown.values())}


def _bold(cell: str, on: bool) -> str:
    return f"**{cell}**" if on else cell


def _is_number(cell: str) -> bool:
    """Whether a cell reads as a number ("**0.716**", "0.701 ± 0.012"), to right-align its column."""
    try:
        float(cell.strip("*").split(" ± ")[0])
    except ValueError:
        return False
    return True


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table; columns holding numbers right-aligned so their decimals line up."""
    rule = ["---:" if any(_is_number(r[j]) for r in rows) else ":---" for j in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _scalar(value: Any) -> str:
    """A setting or τ as a reader would write it: 0.001, auto, 50, [5, 10]."""
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _attributes(results: dict) -> list[str]:
    """The main table's attribute columns: the dataset's order, else first appearance in the methods."""
    names = list((results.get("dataset") or {}).get("attributes") or [])
    for row in results["methods"].values():
        names += [a for a in row.get("per_attribute", {}) if a not in names]
    return names


# ---------------------------------------------------------------- the main table
def format_table(results: dict) -> str:
    """The main table as aligned plain text for a terminal: method, mean, one column per attribute.

    >>> print(format_table({"methods": {"micro": {"mean": 0.7, "per_attribute": {"a": 0.6, "b": 0.8}}}}))
    method   mean      a      b
    micro   0.700  0.600  0.800
    """
    attributes, methods = _attributes(results), results["methods"]
    ci = any("ci95" in row for row in methods.values())
    header = ["method", "mean", *(["95% CI"] if ci else []), *attributes]
    rows = [[name, _acc(row["mean"]), *([_interval(row.get("ci95"))] if ci else []),
             *(_acc(row.get("per_attribute", {}).get(a)) for a in attributes)]
            for name, row in methods.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     .rstrip() for r in [header, *rows])


def _main_section(results: dict) -> str:
    """Methods × (attributes, Average[, Paper], Supervision), best label-free value per column in bold."""
    attributes, methods = _attributes(results), results["methods"]
    paper = results.get("paper") or {}
    columns = [[row.get("per_attribute", {}).get(a) for row in methods.values()] for a in attributes]
    columns.append([row["mean"] for row in methods.values()])
    best = [_best([None if name in REFERENCE_METHODS else v for name, v in zip(methods, col)]) for col in columns]
    ci = any("ci95" in row for row in methods.values())
    header = (["method", *attributes, "Average"] + (["95% CI"] if ci else []) + (["Paper (avg)"] if paper else [])
              + ["Supervision"])
    rows = []
    for i, (name, row) in enumerate(methods.items()):
        cells = [_bold(_acc(col[i]), i in best[j]) for j, col in enumerate(columns)]
        rows.append([name, *cells] + ([_interval(row.get("ci95"))] if ci else [])
                    + ([_acc(paper.get(name))] if paper else []) + [row.get("supervision", "")])
    parts = ["## Pairwise accuracy per attribute", _md_table(header, rows),
             f"Bold: best per column; {', '.join(sorted(REFERENCE_METHODS))} (trained with attribute labels) "
             "is a reference and is not ranked." + (" " + _bootstrap_note(results) if ci else "")]
    paper_only = {k: v for k, v in paper.items() if k not in methods}
    if paper_only:
        parts.append("Paper numbers without a row here: "
                     + ", ".join(f"{k} {_acc(v)}" for k, v in paper_only.items()) + ".")
    return "\n\n".join(parts)


# ---------------------------------------------------------------- the optional sections
def _header_section(results: dict) -> str:
    """Title, how the run was made (command, machine, wall time), the data and the settings."""
    lines = [f"# {results.get('title', 'MiCRo experiment')}"]
    run = [f"command: `{results['command']}`" if results.get("command") else "",
           f"machine: {results['machine']}" if results.get("machine") else "",
           f"wall time: {results['seconds'] / 60:.1f} min ({results['seconds']:.0f} s)" if results.get("seconds") else ""]
    if any(run):
        lines.append(" · ".join(p for p in run if p))
    if results.get("timing"):
        lines.append("Time: " + " · ".join(f"{step} {seconds:.1f} s" for step, seconds in results["timing"].items())
                     + " (other: HyRe, evaluation, intervals, saving).")
    data = results.get("dataset") or {}
    if data:
        sizes = [f"{data[k]} {k.replace('_', ' ')}" for k in ("train_pairs", "test_pairs") if k in data]
        lines.append(f"Data: **{data.get('name', '?')}**" + (f", {', '.join(sizes)}" if sizes else "")
                     + (f"; attributes: {', '.join(data['attributes'])}" if data.get("attributes") else "") + ".")
    if results.get("settings"):
        lines.append("Settings: " + " · ".join(f"{k} = {_scalar(v)}" for k, v in results["settings"].items()) + ".")
    return "\n\n".join(lines)


def _bootstrap_note(results: dict) -> str:
    """How the intervals were made, from ``results["bootstrap"]`` when the run recorded it."""
    boot = results.get("bootstrap") or {}
    draws = f"{boot['resamples']} resamples of the {boot['unit']}s" if boot else "resampling test prompts"
    return (f"95% CI: percentile bootstrap, {draws}, not of the pairs (pairs of one prompt are not "
            "independent); a row averaged over budget or label draws is resampled as that average.")


def _differences_section(results: dict) -> str:
    """Paired differences of methods on the same bootstrap draws; those whose interval includes 0
    are marked, since the data cannot tell those two methods apart."""
    differences = results.get("differences")
    if not differences:
        return ""
    rows = [[f"{d['method']} − {d['against']}", _signed(d["difference"]), _interval(d["ci95"]),
             "no" if d["excludes_zero"] else "**yes: not resolved**"] for d in differences]
    return "\n\n".join(["## Paired differences",
                         _md_table(["difference", "accuracy", "95% CI", "interval includes 0"], rows),
                         "Both methods scored on the same bootstrap draws of the test prompts. A difference "
                         "whose interval includes 0 is within the noise of this test set."])


def _interval_section(results: dict) -> str:
    """Each method's per-attribute 95% intervals (the main table's cells, with their uncertainty)."""
    methods = {name: row for name, row in results["methods"].items() if row.get("per_attribute_ci95")}
    if not methods:
        return ""
    attributes = _attributes(results)
    rows = [[name, *(_interval(row["per_attribute_ci95"].get(a)) for a in attributes)]
            for name, row in methods.items()]
    return "\n\n".join(["## 95% intervals per attribute", _md_table(["method", *attributes], rows)])


def _variants_section(results: dict) -> str:
    """Stage-1 protocol × regulariser grid, so each step's effect on accuracy is visible."""
    variants = results.get("variants")
    if not variants:
        return ""
    best1 = _best([v.get("stage1") for v in variants])
    best2 = _best([v.get("stage2") for v in variants])
    draws = any("stage2_draws" in v for v in variants)
    rows = [[str(v.get("protocol", MISSING)), str(v.get("balance", MISSING)),
             _bold(_acc(v.get("stage1")), i in best1), _bold(_acc(v.get("stage2")), i in best2),
             *([str(v.get("stage2_draws", MISSING))] if draws else []), _scalar(v["tau"]) if "tau" in v else MISSING]
            for i, v in enumerate(variants)]
    header = ["protocol", "balance", "stage-1 accuracy", "stage-2 accuracy", *(["budget draws"] if draws else []), "τ"]
    return "\n\n".join(["## Stage-1 protocol and regulariser", _md_table(header, rows)])


def _figure_link(name: str, alt: str, figures: set[str]) -> list[str]:
    """The markdown image for ``name`` if it was drawn (relative, so the folder can move)."""
    return [f"![{alt}]({name})"] if name in figures else []


def _head_attribute_section(results: dict, figures: set[str]) -> str:
    """The K × attributes accuracy matrix of the stage-1 heads and the best head per attribute."""
    section = results.get("head_attribute")
    if not section:
        return ""
    accuracy, attributes = section["accuracy"], section["attributes"]
    best = best_head_per_attribute(accuracy)
    bold = [_best(column) for column in zip(*accuracy)]
    rows = [[f"head {k}", *(_bold(_acc(v), k in bold[a]) for a, v in enumerate(row))] for k, row in enumerate(accuracy)]
    rows.append(["best head", *(f"head {k}" for k in best)])
    ceiling = sum(accuracy[k][a] for a, k in enumerate(best)) / len(best)
    return "\n\n".join(["## Stage-1 heads × attributes", _md_table(["head", *attributes], rows),
                        f"Best head per attribute (oracle routing, the ceiling of any router): "
                        f"mean accuracy {_acc(ceiling)}.",
                        *_figure_link("head_attribute.png", "head × attribute accuracy", figures)])


def _router_section(results: dict, figures: set[str]) -> str:
    """Mean routed weight per attribute; beside it the best stage-1 head, to see if routing finds it."""
    section = results.get("router_weights")
    if not section:
        return ""
    weights, attributes = section["weights"], section["attributes"]
    heads = [f"head {k}" for k in range(len(weights[0]))]
    matrix = results.get("head_attribute")
    best = dict(zip(matrix["attributes"], best_head_per_attribute(matrix["accuracy"]))) if matrix else {}
    rows = []
    for attribute, row in zip(attributes, weights):
        top = _best(row)
        rows.append([attribute, *(_bold(_acc(w), k in top) for k, w in enumerate(row))]
                    + ([f"head {best[attribute]}" if attribute in best else MISSING] if best else []))
    header = ["attribute", *heads] + (["best stage-1 head"] if best else [])
    return "\n\n".join(["## Router weights per attribute", _md_table(header, rows),
                        "Mean routed weight over each attribute's test prompts; bold: the favoured head.",
                        *_figure_link("router_weights.png", "router weights per attribute", figures)])


def _budget_section(results: dict, figures: set[str]) -> str:
    """Stage-2 accuracy against the context budget B, mean ± std over seeds."""
    curve = results.get("budget_curve")
    if not curve:
        return ""
    std = curve.get("std") or [None] * len(curve["mean"])
    rows = [[str(b), _acc(m) + (f" ± {_acc(s)}" if s is not None else "")]
            for b, m, s in zip(curve["budgets"], curve["mean"], std)]
    parts = ["## Budget curve", _md_table(["budget B / attribute", "mean accuracy"], rows)]
    notes = [f"over {curve['seeds']} seeds (draws of the budget)"] if curve.get("seeds") else []
    if curve.get("reference"):
        notes.append("references: " + ", ".join(f"{k} {_acc(v)}" for k, v in curve["reference"].items()))
    if notes:
        std_name = f"sample std (ddof = {curve['std_ddof']})" if "std_ddof" in curve else "std"
        parts.append(f"Mean ± {std_name} " + "; ".join(notes) + ".")
    return "\n\n".join(parts + _figure_link("budget_curve.png", "accuracy vs budget", figures))


def render_report(results: dict, figures: Iterable[str] = (), extra: str = "") -> str:
    """``report.md``'s text; ``figures`` are the PNG file names drawn beside it (linked relatively),
    ``extra`` more sections to end it."""
    figures = set(figures)
    sections = [_header_section(results), _main_section(results), _differences_section(results),
                _interval_section(results), _variants_section(results),
                _head_attribute_section(results, figures), _router_section(results, figures),
                _budget_section(results, figures), extra]
    return "\n\n".join(s for s in sections if s) + "\n"


# ---------------------------------------------------------------- writing
def _can_plot() -> bool:
    """matplotlib is optional: without it the tables are still worth writing."""
    return importlib.util.find_spec("matplotlib") is not None


def write_report(results: dict, folder: str | Path, extra: Optional[Callable[[dict], str]] = None) -> Path:
    """Write ``results.json``, the figures and ``report.md`` into ``folder``; return the folder.

    Everything is rendered from ``results`` as read back from its JSON, so the report can never
    show a number that results.json does not hold; ``extra`` renders more sections from it, to
    end report.md. Files are replaced atomically and report.md is written last: a crash part-way
    leaves the previous report intact, never a half-written one.
    """
    text = json.dumps(results, indent=2, ensure_ascii=False, default=json_default)
    saved = json.loads(text)
    check_results(saved)
    folder = Path(folder)
    if not _can_plot():
        warnings.warn("matplotlib is not installed, so the report has no figures; `pip install matplotlib` "
                      "and rerun write_report on the results.json to draw them", stacklevel=2)
        figures: list[Path] = []
    else:
        figures = write_plots(saved, folder)
    report = render_report(saved, [p.name for p in figures], extra(saved) if extra else "")
    with atomic_open(folder / RESULTS_FILE) as fh:
        fh.write(text + "\n")
    with atomic_open(folder / REPORT_FILE) as fh:
        fh.write(report)
    return folder
