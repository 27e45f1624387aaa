"""One router per resource: scores (``/score``, ``/compare``, ``/get_reward``), feedback, users."""
