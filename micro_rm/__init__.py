"""micro-rm: personalized reward models with MiCRo (mixture of BT heads + context-aware routing).

>>> from micro_rm import MiCRo
>>> rm = MiCRo(heads=4).fit("pairs.jsonl")                                  # doctest: +SKIP
>>> rm.score("How do I sort a list?", ["Use sorted(xs).", "No."], context="I am new to Python.")  # doctest: +SKIP

Importing the package is cheap: heavy modules (torch, transformers) load only when a
function that needs them is called.
"""

from typing import TYPE_CHECKING

from micro_rm._lazy import lazy_exports

if TYPE_CHECKING:   # what type checkers see; at run time __getattr__ imports these on first use
    from micro_rm.api import MiCRo as MiCRo
    from micro_rm.data.readers import read_pairs as read_pairs
    from micro_rm.integrations.trl import MicroRMRewardFunction as MicroRMRewardFunction
    from micro_rm.model.mixture import MixtureRewardModel as MixtureRewardModel

__version__ = "0.1.0"

_EXPORTS = {
    "MiCRo": "micro_rm.api",
    "MixtureRewardModel": "micro_rm.model.mixture",
    "MicroRMRewardFunction": "micro_rm.integrations.trl",
    "read_pairs": "micro_rm.data.readers",
}
__all__ = ["__version__", *sorted(_EXPORTS)]
__getattr__ = lazy_exports("micro_rm", _EXPORTS)
