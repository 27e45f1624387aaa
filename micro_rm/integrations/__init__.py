"""Adapters for RLHF libraries, each in the library's own calling convention (README, "RLHF
integrations", names the tested versions): :mod:`~micro_rm.integrations.trl`,
:mod:`~micro_rm.integrations.openrlhf` and :mod:`~micro_rm.integrations.verl`. Importing them
never imports those libraries.
"""
