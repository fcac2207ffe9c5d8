"""Model families, each built from one ModelConfig by `build_model`."""
from ..config import ModelConfig
from .bert import BERT
from .gpt import GPT
from .rnn import RNNLM


def build_model(cfg: ModelConfig):
    if cfg.type == "gpt":
        return GPT(cfg)
    if cfg.type == "bert":
        return BERT(cfg)
    if cfg.type == "lstm":
        return RNNLM(cfg)
    raise ValueError(f"unknown model type {cfg.type!r}")  # unreachable: the config edge checks `type`


__all__ = ["BERT", "GPT", "RNNLM", "build_model"]
