"""recjobs: recommendation training (two-tower retrieval, DLRM/DCN ranking) as TorchX jobs.

`recjobs.Recommender` (recjobs.inference.recommend) turns a trained run into recommendations and
scores.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy: `recjobs resolve` and the TorchX component must not wait for torch to import.
    if name == "Recommender":
        from recjobs.inference.recommend import Recommender

        return Recommender
    raise AttributeError(f"module 'recjobs' has no attribute {name!r}")
