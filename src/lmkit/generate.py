"""Temporary: api.py (and cli.py) move to lmkit.sampling / lmkit.engine / lmkit.textstream; then this shim goes."""
from .sampling import SamplingConfig, sampling_config  # noqa: F401
from .textstream import stream_pieces  # noqa: F401
