"""Best-of-n with a MiCRo reward model: pick, for one user context, the best of n candidates.

    python examples/best_of_n.py --model runs/dsp --context "I am a researcher; answer rigorously."
    python examples/best_of_n.py            # no model: an untrained demo model (random choices)

Needs only micro-rm (no TRL). With ``--state`` and ``--user`` the user's adapted weights are used
(the state the service's /feedback writes).
"""

from __future__ import annotations

import argparse

PROMPT = "Why is the sky blue?"
CANDIDATES = [
    "Rayleigh scattering: air molecules scatter short (blue) wavelengths about 5.5x more than red ones.",
    "Because the sky is basically a giant mood ring and today it's feeling chill!",
    "Sunlight scatters off the atmosphere; blue scatters most, so that is what we see.",
    "Blue.",
]


def demo_model():
    """An untrained model on the static backbone, so the example runs without a trained folder."""
    import torch

    from micro_rm.features.backbones import load_backbone
    from micro_rm.model import MixtureConfig, MixtureRewardModel

    backbone = load_backbone("static")
    torch.manual_seed(0)
    return MixtureRewardModel(MixtureConfig(num_heads=4, reward_dim=backbone.dim, route_dim=backbone.dim,
                                            backbone=backbone.fingerprint())).eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Model folder from `micro-rm train` (default: an untrained demo model).")
    parser.add_argument("--context", default=None, help="The user's context (persona, criterion).")
    parser.add_argument("--state", default=None, help="Per-user state, e.g. sqlite:///state.db.")
    parser.add_argument("--user", default=None, help="Score with this user's adapted weights (needs --state).")
    args = parser.parse_args(argv)

    from micro_rm.integrations.trl import MicroRMRewardFunction, best_of_n

    if args.model is None:
        print("no --model: using an untrained demo model, so the choice below is arbitrary")
    reward = MicroRMRewardFunction(args.model or demo_model(), context=args.context, state=args.state)
    best = best_of_n(PROMPT, CANDIDATES, reward, user_id=args.user)
    for i, (text, r) in enumerate(zip(CANDIDATES, best.rewards)):
        print(f"{'->' if i == best.index else '  '} {r:+.4f}  {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
