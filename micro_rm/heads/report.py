"""The heads report: ``heads.json`` (the profile), ``report.md`` and three figures, all drawn from
the profile as read back from its JSON; ``report.md`` is written last, atomically like the rest.

>>> write_heads_report(profile, "runs/dsp-heads", title="runs/dsp on dsp-test.jsonl")   # doctest: +SKIP
PosixPath('runs/dsp-heads')
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from micro_rm.atomic import atomic_open
from micro_rm.eval.plots import _figure, _heatmap, _titled, plot_head_attribute

PROFILE_FILE = "heads.json"
TOP_STATISTICS = 3      # statistics listed per head in the summary table


def write_heads_report(profile: dict[str, Any], folder: str | Path, *, title: str) -> Path:
    """Write the report of ``profile`` (:func:`micro_rm.heads.profile.profile_heads`) into ``folder``."""
    folder = Path(folder)
    text = json.dumps({"title": title, **profile}, indent=2, ensure_ascii=False)
    saved = json.loads(text)
    plot_head_attribute({"title": title, "head_attribute": saved["accuracy"]}, folder / "head_attribute.png")
    plot_statistics(saved, folder / "head_statistics.png")
    plot_agreement(saved, folder / "head_agreement.png")
    with atomic_open(folder / PROFILE_FILE) as fh:
        fh.write(text + "\n")
    with atomic_open(folder / "report.md") as fh:
        fh.write(render_heads_report(saved))
    return folder


def plot_statistics(profile: dict[str, Any], path: str | Path) -> Path:
    """Heatmap head × statistic of the Spearman correlation between the head's reward difference
    and the statistic's difference (fixed scale [−1, 1], so runs compare)."""
    stats = profile["statistics"]
    rho, names = stats["spearman"], stats["names"]
    rows = [f"head {k}" for k in range(len(rho))]
    with _figure(path, _titled(profile, "What each head rewards (Spearman ρ of reward and statistic differences)"),
                 "statistic", "head", (2.5 + 0.62 * len(names), 1.6 + 0.5 * len(rows))) as (fig, ax):
        _heatmap(fig, ax, rho, rows, names, "Spearman ρ", "RdBu", [], scale=(-1.0, 1.0))
    return Path(path)


def plot_agreement(profile: dict[str, Any], path: str | Path) -> Path:
    """Heatmap of how often two heads pick the same winner, heads in clustered order; boxed
    cells join heads of one cluster (agreement ≥ the cluster threshold)."""
    section = profile["agreement"]
    order, matrix = section["order"], section["matrix"]
    values = [[matrix[i][j] for j in order] for i in order]
    names = [f"head {k}" for k in order]
    cluster_of = {h: c for c, members in enumerate(section["clusters"]) for h in members}
    boxed = [(a, b) for a, i in enumerate(order) for b, j in enumerate(order) if i != j and cluster_of[i] == cluster_of[j]]
    title = _titled(profile, f"Head × head agreement (clustered; box: ≥ {section['cluster_min_agreement']})")
    with _figure(path, title, "head", "head", (2.2 + 0.8 * len(order), 1.6 + 0.6 * len(order))) as (fig, ax):
        _heatmap(fig, ax, values, names, names, "share of pairs with the same winner", "viridis", boxed)
    return Path(path)


def render_heads_report(profile: dict[str, Any]) -> str:
    """report.md from a profile."""
    stats, accuracy = profile["statistics"], profile["accuracy"]
    k_all = range(profile["num_heads"])
    masked = set(profile.get("masked_heads", []))
    lines = [f"# Heads: {profile['title']}", "",
             f"{profile['pairs']} pairs; routed accuracy {profile['routed']['mean_accuracy']:.4f}. "
             "Intervals are 95% bootstrap intervals over prompts. Labels are stored in the model's "
             "config.json (`head_labels`); edit them with `micro-rm heads label`.", "",
             "| head | label | router usage | mean accuracy | most distinctive statistics (lead over the nearest other head) |",
             "|---|---|---|---|---|"]
    for k in k_all:
        lead, ci = stats["lead"][k], stats["lead_ci95"][k]
        top = sorted(range(len(lead)), key=lambda s: -abs(lead[s]))[:TOP_STATISTICS]
        traits = ", ".join(f"{stats['names'][s]} {lead[s]:+.2f} [{ci[s][0]:+.2f}, {ci[s][1]:+.2f}]" for s in top)
        lines.append(f"| {k}{' (masked)' if k in masked else ''} | {profile['labels'][k]} | "
                     f"{profile['usage'][k]:.3f} | {accuracy['mean'][k]:.3f} | {traits} |")
    lines += ["", "## Accuracy per attribute", "", "![head × attribute](head_attribute.png)", "",
              "| head | " + " | ".join(accuracy["attributes"]) + " |",
              "|---|" + "---|" * len(accuracy["attributes"])]
    for k in k_all:
        cells = [f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, (lo, hi) in zip(accuracy["accuracy"][k], accuracy["ci95"][k])]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "## What each head rewards", "",
              "Spearman correlation between a head's reward difference (chosen − rejected) and the same "
              "difference of each response statistic.", "", "![head × statistic](head_statistics.png)", "",
              "| statistic | what it measures | " + " | ".join(f"head {k}" for k in k_all) + " |",
              "|---|---|" + "---|" * profile["num_heads"]]
    for s, name in enumerate(stats["names"]):
        lines.append(f"| {name} | {stats['descriptions'][s]} | "
                     + " | ".join(f"{stats['spearman'][k][s]:+.2f}" for k in k_all) + " |")
    section = profile["agreement"]
    lines += ["", "## Agreement between heads", "", "![agreement](head_agreement.png)", "",
              f"Clusters at agreement ≥ {section['cluster_min_agreement']}: "
              + ", ".join("{" + ", ".join(map(str, c)) + "}" for c in section["clusters"]), "",
              "## Contrastive examples", "",
              "Pairs on which the head disagrees most with the mean of the other heads."]
    for k in k_all:
        lines += ["", f"### Head {k}: {profile['labels'][k]}"]
        for e in profile["examples"][k]:
            lines += ["", f"- attribute `{e['attribute']}`, head p = {e['head_p']:.2f}, others p = {e['others_p']:.2f} "
                          f"(head {'agrees' if e['head_agrees_with_label'] else 'disagrees'} with the label)",
                      f"  - **prompt:** {_quote(e['prompt'])}",
                      f"  - **head {k} prefers:** {_quote(e['head_prefers'])}",
                      f"  - **the others prefer:** {_quote(e['others_prefer'])}"]
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
