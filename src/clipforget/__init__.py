"""clipforget: make a CLIP model forget one subgroup of images and keep everything else."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # The API imports torch and friends: load it on first use, not at package import.
    if name in ("evaluate", "forget", "forget_together", "bench", "mine", "read_ledger", "audit", "load_model"):
        from clipforget import models
        from clipforget.app import api

        return getattr(api, name, None) or getattr(models, name)
    raise AttributeError(name)
