"""The experiment's report: :func:`micro_rm.eval.report.write_report`, then the sections only an
experiment has (notes, calibration, routing statistics, per-user online Hedge), rendered from the
same ``results.json`` so every number in ``report.md`` is one that file holds."""

from __future__ import annotations

import json
from pathlib import Path

from micro_rm.atomic import atomic_open
from micro_rm.eval.report import REPORT_FILE, RESULTS_FILE, _acc, _md_table, write_report


def write_experiment_report(results: dict, folder: str | Path) -> Path:
    """Write the report folder and append the experiment's extra sections to ``report.md``."""
    folder = write_report(results, folder)
    saved = json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))
    text = (folder / REPORT_FILE).read_text(encoding="utf-8")
    extra = extra_sections(saved)
    if extra:
        with atomic_open(folder / REPORT_FILE) as fh:
            fh.write(text.rstrip("\n") + "\n\n" + extra + "\n")
    return folder


def extra_sections(results: dict) -> str:
    """Markdown of the sections ``write_report`` does not draw."""
    parts = []
    if results.get("notes"):
        parts.append("## Notes\n\n" + "\n".join(f"- {note}" for note in results["notes"]))
    rows = [[name, _acc(row.get("nll")), _acc(row.get("ece"))] for name, row in results["methods"].items()
            if "nll" in row]
    if rows:
        parts.append("## Calibration of the routed probabilities\n\n"
                     + _md_table(["method", "NLL", "ECE"], rows)
                     + "\n\nNLL: mean −log p of the labelled winner; ECE: expected calibration error "
                       "(10 confidence bins). micro: mean over the budget draws.")
    router = results.get("router") or {}
    if router.get("stage1"):
        heads = len(router["stage1"]["head_usage"])
        rows = [[stage, _acc(stats["mean_entropy"]), " / ".join(_acc(u) for u in stats["head_usage"]),
                 " / ".join(_acc(u) for u in stats["top_head_share"])]
                for stage, stats in (("stage 1", router["stage1"]), ("stage 2", router.get("stage2")))
                if stats]
        parts.append("## Router statistics (test pairs, `micro`)\n\n"
                     + _md_table(["router", "mean entropy (nats)", f"head usage (K = {heads})",
                                  "share of pairs whose top head is k"], rows)
                     + ("\n\nτ chosen per budget draw: "
                        + ", ".join(f"{t} ×{n}" for t, n in router["stage2_taus"].items()) + "."
                        if router.get("stage2_taus") else ""))
    users = results.get("users")
    if users:
        rows = [[user, str(u["test_pairs"]), str(u["feedback_pairs"]), _acc(u["before"]), _acc(u["after"])]
                for user, u in users["per_user"].items()]
        parts.append("## Per-user online Hedge\n\n"
                     + _md_table(["user", "test pairs", "feedback pairs", "accuracy before", "accuracy after"],
                                 rows)
                     + f"\n\nOne shared stage-1 model; each user's Hedge state (η = {users['eta']:g}) learns "
                       "from that user's feedback pairs (train split), accuracy on the user's test pairs.")
    encoding = results.get("encoding")
    if encoding:
        parts.append(f"Features: {encoding['texts_encoded']} texts encoded in this run "
                     f"({encoding['seconds']:.0f} s); the others came from the feature cache.")
    return "\n\n".join(parts)
