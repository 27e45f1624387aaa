"""GRPO with TRL, rewarded by a MiCRo model routed by each sample's context.

    pip install -e ".[trl]"              # TRL; micro-rm itself does not need it
    python examples/trl_grpo_reward.py --model runs/dsp-adapted              # a toy policy, CPU, offline
    python examples/trl_grpo_reward.py --model runs/dsp-adapted --policy Qwen/Qwen2.5-0.5B-Instruct

``MicroRMRewardFunction`` has the signature GRPOTrainer expects of ``reward_funcs``
(prompts, completions, **kwargs) -> list[float]. Dataset columns reach it as keyword arguments:
here a ``context`` column routes each prompt by its user's context. A ``user_id`` column (with
``state="sqlite:///state.db"``) would use each user's weights learned online by the service.
Without ``--policy`` the policy is a one-layer toy model on the packaged MiniLM tokenizer, so the
example runs offline on a CPU in seconds; it runs on the GPU when there is one.
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


def tiny_policy():
    """``(policy, tokenizer)``: a one-layer Llama on the packaged MiniLM tokenizer (no download)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from micro_rm.features.backbones.sources import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir()))
    tokenizer.eos_token = "[SEP]"                                   # a BERT vocabulary has no EOS
    tokenizer.model_input_names = ["input_ids", "attention_mask"]   # no token_type_ids for generate
    torch.manual_seed(0)
    policy = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                          pad_token_id=tokenizer.pad_token_id,
                                          eos_token_id=tokenizer.eos_token_id))
    return policy, tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="MiCRo model folder from `micro-rm train` / `adapt`.")
    parser.add_argument("--policy", default=None,
                        help="Policy model to train (hub id or folder); default: a one-layer toy policy.")
    parser.add_argument("--out", default="runs/grpo-micro", help="Where TRL writes checkpoints.")
    parser.add_argument("--max-steps", type=int, default=2, help="GRPO steps (a smoke run).")
    args = parser.parse_args(argv)

    from micro_rm.integrations.trl import MicroRMRewardFunction

    # per-sample context comes from the column; TRL logs the rewards as rewards/micro_rm/mean
    reward = MicroRMRewardFunction(args.model, name="micro_rm")
    print("rewards of two toy completions:",
          reward([ROWS[0]["prompt"]] * 2, ["A hash table maps keys to buckets by a hash.", "lol"],
                 context=[ROWS[0]["context"]] * 2))
    try:
        import torch
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        print("TRL is not installed (pip install -e \".[trl]\"); the reward function above is what you pass "
              "as GRPOTrainer(reward_funcs=reward).")
        return 0
    policy, tokenizer = tiny_policy() if args.policy is None else (args.policy, None)
    trainer = GRPOTrainer(model=policy, processing_class=tokenizer, reward_funcs=reward,
                          train_dataset=Dataset.from_list(ROWS * 4),
                          args=GRPOConfig(output_dir=args.out, max_steps=args.max_steps,
                                          per_device_train_batch_size=4, num_generations=4,
                                          max_completion_length=16 if args.policy is None else 64,
                                          logging_steps=1, report_to=[], save_strategy="no",
                                          use_cpu=not torch.cuda.is_available()))
    trainer.train()
    logged = [h["rewards/micro_rm/mean"] for h in trainer.state.log_history if "rewards/micro_rm/mean" in h]
    print(f"{len(logged)} GRPO steps; mean reward per step: {[round(r, 4) for r in logged]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
