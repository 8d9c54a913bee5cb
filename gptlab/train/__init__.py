"""Training: configuration and presets, optimizers and schedule, checkpoints, and the loop.

`gptlab.train(values, out=...)` calls the loop: this package is itself callable, because importing any of
its modules makes `gptlab.train` name the package, and a function of that name would be shadowed by it.
"""

from __future__ import annotations

import importlib
import sys
import types

# Imported on first use: the loss plot runs `python -m gptlab.train.plot` in its own process, which should
# not pay for torch (a second and 220 MiB) just because its package's __init__ imported the loop.
_EXPORTS = {"PRESETS": "gptlab.train.config", "TrainConfig": "gptlab.train.config",
            "TrainResult": "gptlab.train.loop", "train": "gptlab.train.loop"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        """See gptlab.train.loop.train."""
        return importlib.import_module("gptlab.train.loop").train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
