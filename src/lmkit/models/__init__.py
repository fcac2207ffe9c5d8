"""Model families, each built from one ModelConfig by `build_model`."""
from ..config import ModelConfig
from .gpt import GPT


def build_model(cfg: ModelConfig):
    if cfg.type == "gpt":
        return GPT(cfg)
    raise ValueError(f"unknown model type {cfg.type!r}")  # unreachable: the config edge checks `type`


__all__ = ["GPT", "build_model"]
