"""GRPO with TRL, rewarded by a MiCRo model routed by each sample's context.

    pip install trl                      # or pip install -e ".[dev]"; micro-rm itself does not need it
    python examples/trl_grpo_reward.py --model runs/dsp --policy Qwen/Qwen2.5-0.5B-Instruct

``MicroRMRewardFunction`` has the signature GRPOTrainer expects of ``reward_funcs``
(prompts, completions, **kwargs) -> list[float]. Dataset columns reach it as keyword arguments:
here a ``context`` column routes each prompt by its user's context. A ``user_id`` column (with
``state="sqlite:///state.db"``) would use each user's weights learned online by the service.
TRL is imported inside ``main``, so this file imports (and explains itself) without it.
"""

from __future__ import annotations

import argparse

ROWS = [
    {"prompt": "Explain what a hash table is.", "context": "I am a researcher; answer rigorously."},
    {"prompt": "Explain what a hash table is.", "context": "I want to be entertained; be playful."},
    {"prompt": "Should my startup use Kubernetes?", "context": "I am a business professional; be concise."},
    {"prompt": "Describe the sea at night.", "context": "I love literature; use rich imagery."},
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="MiCRo model folder from `micro-rm train`.")
    parser.add_argument("--policy", default="Qwen/Qwen2.5-0.5B-Instruct", help="Policy model to train.")
    parser.add_argument("--out", default="runs/grpo-micro", help="Where TRL writes checkpoints.")
    parser.add_argument("--max-steps", type=int, default=10, help="GRPO steps (a smoke run).")
    args = parser.parse_args(argv)

    from micro_rm.integrations.trl import MicroRMRewardFunction

    # per-sample context comes from the column; TRL logs the rewards as rewards/micro_rm/mean
    reward = MicroRMRewardFunction(args.model, name="micro_rm")
    print("rewards of two toy completions:",
          reward([ROWS[0]["prompt"]] * 2, ["A hash table maps keys to buckets by a hash.", "lol"],
                 context=[ROWS[0]["context"]] * 2))
    try:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        print("TRL is not installed (pip install trl); the reward function above is what you pass "
              "as GRPOTrainer(reward_funcs=reward).")
        return 0
    trainer = GRPOTrainer(model=args.policy, reward_funcs=reward, train_dataset=Dataset.from_list(ROWS * 16),
                          args=GRPOConfig(output_dir=args.out, max_steps=args.max_steps,
                                          per_device_train_batch_size=4, num_generations=4,
                                          max_completion_length=64, logging_steps=1, report_to=[]))
    trainer.train()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
