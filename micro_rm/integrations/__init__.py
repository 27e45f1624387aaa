"""Adapters for RLHF libraries: :mod:`micro_rm.integrations.trl` (a reward function for TRL's
``GRPOTrainer`` and a best-of-n helper). Importing them never imports TRL."""
