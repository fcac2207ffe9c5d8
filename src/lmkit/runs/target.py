"""lmkit's own files in a model directory, and removing them for --overwrite (the check itself,
`check_target`, is in io.py: the data layer uses it too)."""
from __future__ import annotations

import shutil
from pathlib import Path


# every file and folder lmkit writes into a run or model directory; --overwrite removes these only,
# never anything else a user keeps there
OWN_FILES = ("config.json", "tokenizer.json", "model.safetensors", "train_state.pt", "metrics.jsonl", "loss.png",
             "quantization.json", "pruning.json", "merged.json", "adapter_config.json", "adapter.safetensors",
             "chat_template.json", "classifier.json", "tokenizer_config.json", "generation_config.json",
             "special_tokens_map.json", "chat_template.jinja", "generation.json",
             "samples.jsonl", "summary.json", "trackers.json", "report.html")
OWN_FOLDERS = {"train_state": ".metadata", "data": "meta.json", "merged": "config.json", "peft": "adapter_config.json"}
EVENTS = "events.out.tfevents."  # TensorBoard's event files (train/trackers.py), one name per writer


def clear(path: Path) -> None:
    """Remove lmkit's own files from a folder."""
    for f in OWN_FILES:
        (path / f).unlink(missing_ok=True)
    for f in path.glob(EVENTS + "*"):
        f.unlink(missing_ok=True)
    for folder, sign in OWN_FOLDERS.items():
        if (path / folder / sign).is_file():
            shutil.rmtree(path / folder)
