"""The experiment's figures, drawn from ``results.json`` alone so that anyone can redraw them.

Each ``plot_*`` draws one section into one PNG; matplotlib loads on first use, so importing this costs nothing.

>>> from micro_rm.eval.plots import write_plots  # doctest: +SKIP
>>> write_plots(json.load(open("report/results.json")), "report")  # doctest: +SKIP
[PosixPath('report/head_attribute.png'), PosixPath('report/router_weights.png'), ...]
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from micro_rm.atomic import atomic_path
from micro_rm.errors import MicroRMError

DPI = 120
REFERENCE_DASHES = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))


def _pyplot():
    """matplotlib's pyplot on the Agg backend: files only, safe on a headless machine."""
    try:
        import matplotlib
    except ImportError:   # an optional dependency: `pip install micro-rm` alone has no plots
        raise MicroRMError("the plots need the plot extra: pip install 'micro-rm[plot]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _titled(results: dict, what: str) -> str:
    """The figure's title: what it shows, then the experiment's title so a lone PNG says its source."""
    return f"{what}\n{results['title']}" if results.get("title") else what


@contextlib.contextmanager
def _figure(path: str | Path, title: str, xlabel: str, ylabel: str,
            size: tuple[float, float]) -> Iterator[tuple[Any, Any]]:
    """Yield ``(fig, ax)`` with titles set; save it to ``path`` atomically and always close it
    (pyplot keeps every open figure, and an experiment draws them in a loop)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=size)
    try:
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        yield fig, ax
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=DPI, format="png")
    finally:
        plt.close(fig)


def _heatmap(fig: Any, ax: Any, values: Sequence[Sequence[float]], rows: Sequence[str], cols: Sequence[str],
             colour_label: str, cmap: str, outlined: Sequence[tuple[int, int]],
             scale: tuple[float, float] = (0.0, 1.0)) -> None:
    """Draw ``values`` (rows × cols) with each cell's value written in it and ``outlined`` cells
    boxed. The colour scale is fixed (``scale``, [0, 1] for shares), never the data's range: a
    stretched scale makes a spread of a few points look like strong specialisation, and figures of
    different runs compare."""
    from matplotlib.patches import Rectangle

    image = ax.imshow(values, cmap=cmap, aspect="auto", vmin=scale[0], vmax=scale[1])
    fig.colorbar(image, ax=ax, label=colour_label)
    crowded = len(cols) > 4  # long attribute names overlap unless slanted
    ax.set_xticks(range(len(cols)), cols, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set_yticks(range(len(rows)), rows)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            # Light text on the dark cells, dark text on the light ones.
            shade = image.cmap(image.norm(value))
            colour = "white" if 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.5 else "black"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color=colour, fontsize=9)
    for i, j in outlined:
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))


def _band(ax: Any, x: Sequence[float], mean: Sequence[float], std: Sequence[float], colour: str,
          alpha: float) -> tuple[list[float], list[float]]:
    """Shade mean ± std around a curve; return the band's (low, high) edges."""
    low, high = [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)]
    ax.fill_between(x, low, high, color=colour, alpha=alpha, linewidth=0)
    return low, high


def best_head_per_attribute(accuracy: Sequence[Sequence[float]]) -> list[int]:
    """Index of the most accurate head for each attribute (column) of a K × A matrix; first on ties.

    >>> best_head_per_attribute([[0.9, 0.4], [0.6, 0.8]])
    [0, 1]
    """
    return [column.index(max(column)) for column in zip(*accuracy)]


def plot_head_attribute(results: dict, path: str | Path) -> Path:
    """Heatmap of every stage-1 head's accuracy on every attribute, best head per attribute boxed
    (what perfect routing could reach): one strong cell per column means the heads specialised.
    The diverging scale centred on chance (0.5) tells a head that prefers the loser from a guesser."""
    section = results["head_attribute"]
    accuracy, attributes = section["accuracy"], section["attributes"]
    heads = [f"head {k}" for k in range(len(accuracy))]
    with _figure(path, _titled(results, "Stage-1 head accuracy per attribute (box: best head)"),
                 "attribute", "head", (1.6 + 1.1 * len(attributes), 1.4 + 0.5 * len(heads))) as (fig, ax):
        _heatmap(fig, ax, accuracy, heads, attributes, "pairwise accuracy (0.5 = chance)", "RdBu",
                 [(k, a) for a, k in enumerate(best_head_per_attribute(accuracy))])
    return Path(path)


def plot_router_weights(results: dict, path: str | Path) -> Path:
    """Heatmap of the router's mean weight on each head for each attribute's test prompts.

    A sharp router puts one bright cell in each row; the boxed cell is the head it favours.
    """
    section = results["router_weights"]
    weights, attributes = section["weights"], section["attributes"]
    heads = [f"head {k}" for k in range(len(weights[0]))]
    favoured = [(a, row.index(max(row))) for a, row in enumerate(weights)]
    with _figure(path, _titled(results, "Mean routed weight per attribute (box: favoured head)"),
                 "head", "attribute", (1.8 + 0.9 * len(heads), 1.4 + 0.5 * len(attributes))) as (fig, ax):
        _heatmap(fig, ax, weights, attributes, heads, "mean router weight", "viridis", favoured)
    return Path(path)


def plot_budget_curve(results: dict, path: str | Path) -> Path:
    """Stage-2 mean accuracy against the context budget B (log 2 axis: budgets roughly double),
    with a ±std band over the seeds. Each reference line (stage 1 alone, the oracle, …) has its
    own dash and the later ones are thinner on top, so two at nearly the same accuracy both show.
    """
    plt = _pyplot()
    curve = results["budget_curve"]
    budgets, mean = curve["budgets"], curve["mean"]
    std = [s or 0.0 for s in curve.get("std") or [0.0] * len(mean)]   # None: one draw, no spread
    seeds = f" over {curve['seeds']} seeds" if curve.get("seeds") else ""
    spread = "sample std" if curve.get("std_ddof") == 1 else "std"
    with _figure(path, _titled(results, f"Accuracy vs context budget (mean ± {spread}{seeds})"),
                 "budget B (context pairs per attribute)", "mean pairwise accuracy", (6.4, 4.2)) as (fig, ax):
        ax.plot(budgets, mean, marker="o", color="C0", label="MiCRo stage 2", zorder=10)
        low, high = _band(ax, budgets, mean, std, "C0", 0.25)
        references = curve.get("reference") or {}
        for i, (name, value) in enumerate(references.items(), start=1):
            ax.axhline(value, linestyle=REFERENCE_DASHES[(i - 1) % len(REFERENCE_DASHES)], color=plt.cm.tab10(i),
                       linewidth=max(3.0 - 0.6 * i, 1.0), zorder=i, label=f"{name} ({value:.3f})")
        # Horizontal lines do not take part in autoscaling; keep every reference inside the frame.
        low = min(low + list(references.values()))
        high = max(high + list(references.values()))
        pad = 0.08 * (high - low) or 0.01
        ax.set_ylim(low - pad, high + pad)
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    return Path(path)


def plot_phrasings(results: dict, path: str | Path) -> Path:
    """Accuracy with the training phrasings, with each held-out phrasing zero-shot, and after
    stage 2 from budgets carrying other phrasings: does a paraphrase route like the original?"""
    p = results["phrasings"]
    names = (["training\nphrasings"] + [f"held-out {j + 1}" for j in range(len(p["heldout_per_phrasing"]))]
             + [f"held-out,\nstage 2,\nB = {b}" for b in p["stage2"]])
    values = [p["training_phrasings"], *p["heldout_per_phrasing"], *(v["mean"] for v in p["stage2"].values())]
    colours = ["C0"] + ["C1"] * len(p["heldout_per_phrasing"]) + ["C2"] * len(p["stage2"])
    with _figure(path, _titled(results, "Stage-1 accuracy by context phrasing"), "",
                 "mean pairwise accuracy", (max(6.4, 0.9 * len(names)), 4.2)) as (fig, ax):
        ax.bar(range(len(values)), values, color=colours)
        ax.set_xticks(range(len(values)), names, fontsize=8)
        ax.set_ylim(max(0.0, min(values) - 0.1), min(1.0, max(values) + 0.05))
        for i, v in enumerate(values):
            ax.text(i, v + 0.005, f"{v:.3f}", ha="center", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    return Path(path)


def plot_user_curve(results: dict, path: str | Path) -> Path:
    """New users' accuracy against their number of feedback pairs (mean ± sample std over draws),
    with and without a stated context, random against active selection, and the oracle."""
    curve = results["user_curve"]
    n = curve["n"]
    x = [max(v, 0.5) for v in n]                                   # n = 0 on a log axis
    with _figure(path, _titled(results, f"New users: accuracy vs feedback pairs (over {curve['seeds']} draws)"),
                 "feedback pairs n (0 drawn at 0.5)", "mean pairwise accuracy", (6.4, 4.2)) as (fig, ax):
        for i, (name, values) in enumerate(curve["curves"].items()):
            mean, std = values["mean"], values["std"]
            ax.plot(x, mean, marker="o", color=f"C{i}", linestyle="-" if "random" in name else "--", label=name)
            _band(ax, x, mean, std, f"C{i}", 0.15)
        if curve.get("oracle"):
            ax.axhline(curve["oracle"], color="black", linestyle=":", label=f"oracle ({curve['oracle']:.3f})")
        ax.set_xscale("log")
        ax.set_xticks(x, [str(v) for v in n])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    return Path(path)


PLOTS: dict[str, Callable[[dict, str | Path], Path]] = {
    "head_attribute": plot_head_attribute,
    "router_weights": plot_router_weights,
    "budget_curve": plot_budget_curve,
    "phrasings": plot_phrasings,
    "user_curve": plot_user_curve,
}


def write_plots(results: dict, folder: str | Path) -> list[Path]:
    """Draw every figure whose section is in ``results`` into ``folder`` as ``<section>.png``.

    A missing section means the experiment did not measure it, so its figure is skipped, and a
    figure left in ``folder`` by an earlier run is removed: it would not match these results.
    """
    folder = Path(folder)
    written = []
    for section, plot in PLOTS.items():
        path = folder / f"{section}.png"
        if results.get(section):
            written.append(plot(results, path))
        else:
            path.unlink(missing_ok=True)
    return written
