"""lmkit: from raw text to a working language model.

    import lmkit
    result = lmkit.train("examples/shakespeare_char.toml")   # or a Config / dict
    lm = lmkit.load(result.out_dir)
    print(lm.generate("ROMEO:", max_new_tokens=100))
"""
from __future__ import annotations

import importlib
import sys
import types

from .errors import LmkitError

__version__ = "0.1.0"

# name -> module that defines it, imported on first use (PEP 562) so that `import lmkit` (and the CLI's
# --help) does not load torch
_LAZY = {"LM": ".api", "load": ".api", "train": ".train.trainer", "Config": ".config", "ModelConfig": ".config",
         "DataConfig": ".config", "TrainConfig": ".config", "load_config": ".config", "Tokenizer": ".tokenizer"}
__all__ = ["LM", "load", "train", "Config", "ModelConfig", "DataConfig", "TrainConfig", "load_config",
           "Tokenizer", "LmkitError"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'lmkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """`lmkit.train` is the function: importing the subpackage lmkit.train (which Python records by setting
    the attribute on its parent) must not replace it. The subpackage stays in sys.modules["lmkit.train"]."""

    def __setattr__(self, name, value):
        if name == "train" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
