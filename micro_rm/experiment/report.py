"""The experiment's report: :func:`micro_rm.eval.report.write_report`, then the sections only an
experiment has (notes, calibration, routing statistics, per-user online Hedge, held-out
phrasings, new users' learning curve), rendered from the
same ``results.json`` so every number in ``report.md`` is one that file holds."""

from __future__ import annotations

from pathlib import Path

from micro_rm.eval.report import _acc, _md_table, write_report


def write_experiment_report(results: dict, folder: str | Path) -> Path:
    """Write the report folder, with the experiment's extra sections at the end of ``report.md``."""
    return write_report(results, folder, extra=extra_sections)


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
                     + ("\n\nstage-2 choice per budget draw (τ of the heads update, contexts τ, corrections τ, or keep): "
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
    if results.get("phrasings"):
        parts.append(phrasings_section(results["phrasings"]))
    if results.get("user_curve"):
        parts.append(user_curve_section(results["user_curve"]))
    encoding = results.get("encoding")
    if encoding:
        parts.append(f"Features: {encoding['texts_encoded']} texts encoded in this run "
                     f"({encoding['seconds']:.0f} s); the others came from the feature cache.")
    return "\n\n".join(parts)


def phrasings_section(p: dict) -> str:
    """Held-out phrasings: the same intent in words the router never saw (micro_rm.experiment.phrasings)."""
    rows = [["training phrasings (stage 1)", _acc(p["training_phrasings"])],
            *([f"held-out phrasing {j + 1} (zero-shot)", _acc(v)] for j, v in enumerate(p["heldout_per_phrasing"])),
            ["**held-out, mean (zero-shot)**", f"**{_acc(p['heldout'])}**"],
            *([f"held-out after stage 2, B = {b} / attribute", f"{_acc(v['mean'])} ± {_acc(v['std'])}"]
              for b, v in p["stage2"].items())]
    example = next(iter(p["test"]))
    return ("## Held-out phrasings\n\n"
            + _md_table(["router input", "accuracy"], rows)
            + f"\n\nStage 1 trained with {len(p['train'][example])} phrasing(s) per attribute; every test "
              f"pair evaluated under each of the {len(p['test'][example])} test phrasings (e.g. {example}: "
              + "; ".join(f"“{t}”" for t in p["test"][example]) + "). Stage 2 draws its budget from train "
              f"pairs carrying {len(p['adapt'][example])} other phrasing(s) per attribute "
              f"(mean ± sample std over {p['seeds']} draws). Held-out / training = **{p['ratio']:.3f}**."
              "\n\n![accuracy by phrasing](phrasings.png)")


def user_curve_section(curve: dict) -> str:
    """New users: accuracy after n feedback pairs (micro_rm.experiment.users)."""
    rows = [[name, *(f"{m:.3f} ± {s:.3f}" for m, s in zip(v["mean"], v["std"]))]
            for name, v in curve["curves"].items()]
    oracle = f"; oracle (one head per attribute) {curve['oracle']:.3f}" if curve.get("oracle") else ""
    return ("## New users: accuracy vs feedback pairs\n\n"
            + _md_table(["user / selection", *(f"n = {n}" for n in curve["n"])], rows)
            + f"\n\nEach attribute is one user ({', '.join(curve['users'])}), known by `user_id` only "
              "(no context: the router's prior is its no-context routing) or also stating the "
              f"attribute's training sentence. Online Hedge with η = {curve['eta']:.3g} (the exact "
              "posterior over heads); feedback drawn at random from the user's train pairs or proposed "
              f"one at a time by expected information gain; mean ± sample std over {curve['seeds']} draws"
              f"{oracle}.\n\n![new users](user_curve.png)")
