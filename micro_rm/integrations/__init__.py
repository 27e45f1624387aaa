"""Adapters for RLHF libraries, each matching the library's own calling convention:

- :mod:`micro_rm.integrations.trl`: ``MicroRMRewardFunction`` for TRL's ``GRPOTrainer``
  (``reward_funcs=``) and ``best_of_n``;
- :mod:`micro_rm.integrations.openrlhf`: ``reward_func(queries, prompts, labels)`` for
  OpenRLHF's ``--reward.remote_url reward_func.py`` (the HTTP route is ``micro-rm serve``'s
  ``/get_reward``);
- :mod:`micro_rm.integrations.verl`: ``compute_score`` for verl's
  ``reward.custom_reward_function`` (``compute_score_batch`` for one's own batched calls).

Tested against the frameworks' own calling code: OpenRLHF 0.11.2, verl 0.9.1, TRL 1.16.0.

Importing them never imports TRL, OpenRLHF or verl.
"""
