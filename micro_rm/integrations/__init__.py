"""Adapters for RLHF libraries, each matching the library's own calling convention:

- :mod:`micro_rm.integrations.trl`: ``MicroRMRewardFunction`` for TRL's ``GRPOTrainer``
  (``reward_funcs=``) and ``best_of_n``;
- :mod:`micro_rm.integrations.openrlhf`: ``reward_func(queries, prompts, labels)`` for
  OpenRLHF's ``--remote_rm_url file.py`` (the HTTP route is ``micro-rm serve``'s ``/get_reward``);
- :mod:`micro_rm.integrations.verl`: ``compute_score`` / ``compute_score_batch`` for verl's
  ``custom_reward_function``.

Importing them never imports TRL, OpenRLHF or verl.
"""
