"""lmkit: from raw text to a working language model.

    import lmkit
    result = lmkit.train("examples/shakespeare_char.toml")   # or a Config / dict
    lm = lmkit.load(result.out_dir)
    print(lm.generate("ROMEO:", max_new_tokens=100))
"""
from .api import LM, load
from .config import Config, DataConfig, ModelConfig, TrainConfig, load_config
from .errors import LmkitError
from .tokenizer import Tokenizer
from .train.trainer import train

__version__ = "0.1.0"
__all__ = ["LM", "load", "train", "Config", "ModelConfig", "DataConfig", "TrainConfig", "load_config",
           "Tokenizer", "LmkitError"]
