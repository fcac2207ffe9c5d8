"""The OpenAI-compatible server (`lmkit serve`) and the terminal chat (`lmkit chat`)."""
from .app import create_app, serve

__all__ = ["create_app", "serve"]
