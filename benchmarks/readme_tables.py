"""Print README's results tables from the committed reports (results/*/results.json).

    python benchmarks/readme_tables.py

Three tables: every method's mean with its 95% interval (bootstrap over test prompts) and the
paired difference MiCRo − single-ctx; held-out phrasings; new users' learning curve.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
DATASETS = (("DSP (4 domains)", "dsp"), ("Topical-Chat (6 attributes)", "topicalchat"),
            ("HH-RLHF (helpful / harmless)", "hh"), ("Demo (synthetic users)", "demo"))
METHODS = (("single", "single"), ("single-ctx", "single + ctx"), ("static", "static"),
           ("shared-base", "shared-base"), ("hyre", "HyRe"), ("micro-hyre", "MiCRo-HyRe"),
           ("micro-stage1", "MiCRo stage 1"), ("micro", "**MiCRo**"), ("oracle", "oracle"))


def cell(row: dict | None, bold: bool = False) -> str:
    if row is None:
        return "—"
    mean = f"**{row['mean']:.3f}**" if bold else f"{row['mean']:.3f}"
    return f"{mean} [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]" if row.get("ci95") else mean


def load(name: str) -> dict | None:
    path = RESULTS / name / "results.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def methods_table() -> None:
    print("| dataset | " + " | ".join(label for _, label in METHODS) + " | MiCRo − single + ctx | report |")
    print("|---|" + "---:|" * (len(METHODS) + 1) + "---|")
    for label, name in DATASETS:
        results = load(name)
        if results is None:
            continue
        methods = results["methods"]
        diff = next((d for d in results.get("differences", [])
                     if (d["method"], d["against"]) == ("micro", "single-ctx")), None)
        gap = "—" if diff is None else (f"{diff['difference']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]"
                                        + ("" if diff["excludes_zero"] else " (includes 0)"))
        print(f"| {label} | " + " | ".join(cell(methods.get(m), m == "micro") for m, _ in METHODS)
              + f" | {gap} | [results/{name}](results/{name}/report.md) |")


def phrasings_table() -> None:
    print("\n| dataset | training phrasings | held-out phrasings, zero-shot | held-out / training "
          "| + stage 2, B = 10 | + stage 2, B = 50 |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, name in DATASETS:
        p = (load(name) or {}).get("phrasings")
        if p:
            stage2 = [f"{p['stage2'][b]['mean']:.3f} ± {p['stage2'][b]['std']:.3f}" if b in p["stage2"] else "—"
                      for b in ("10", "50")]
            print(f"| {label} | {p['training_phrasings']:.3f} | {p['heldout']:.3f} | {p['ratio']:.3f} | "
                  + " | ".join(stage2) + " |")


def users_table() -> None:
    print("\n| dataset | user / selection | n = 0 | 1 | 2 | 5 | 10 | 20 | 50 | oracle |")
    print("|---|---|" + "---:|" * 8)
    for label, name in DATASETS:
        curve = (load(name) or {}).get("user_curve")
        if curve:
            oracle = f"{curve['oracle']:.3f}" if curve.get("oracle") else "—"
            for kind, values in curve["curves"].items():
                print(f"| {label} | {kind} | " + " | ".join(f"{m:.3f}" for m in values["mean"]) + f" | {oracle} |")


if __name__ == "__main__":
    methods_table()
    phrasings_table()
    users_table()
