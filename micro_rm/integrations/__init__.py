"""Adapters for RLHF libraries, each in the library's own calling convention (README, "RLHF
integrations"): :mod:`~micro_rm.integrations.trl` (``MicroRMRewardFunction`` for ``GRPOTrainer``,
``best_of_n``), :mod:`~micro_rm.integrations.openrlhf` (``reward_func`` for
``--reward.remote_url``; the HTTP route is ``micro-rm serve``'s ``/get_reward``) and
:mod:`~micro_rm.integrations.verl` (``compute_score``, ``compute_score_batch``).

Tested against OpenRLHF 0.11.2, verl 0.9.1 and TRL 1.16.0; importing them never imports those.
"""
