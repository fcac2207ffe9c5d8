"""The `Run` record: what one model directory holds, once read."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Run:
    path: Path
    kind: str  # run, hf, int8, pruned, lora, merged, classifier, index, data (see lmkit.runs)
    config: Any = None  # lmkit.config.Config (a classifier's: its backbone's model settings)
    model: Any = None  # torch.nn.Module, in eval mode, weights loaded
    tokenizer: Any = None  # lmkit.tokenizer.Tokenizer
    chat_template: Any = None  # lmkit.chat.ChatTemplate
    meta: dict = field(default_factory=dict)  # per kind: quantization, adapters, pruning, classifier.json, ...
    step: int = 0  # the training step the weights were saved at

    @property
    def family(self) -> str | None:
        """gpt, bert, lstm, or classifier."""
        if self.kind == "classifier":
            return "classifier"
        return self.config.model.type if self.config is not None else None
