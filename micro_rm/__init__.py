"""micro-rm: personalized reward models with MiCRo (mixture of BT heads + context-aware routing).

Importing the package is cheap: heavy modules (torch, transformers) load only when a
function that needs them is called.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
