"""The command that serves a model over HTTP: serve."""
# The handler imports the library when it runs, so that `lmkit --help` and flag errors never load torch.
from __future__ import annotations

from . import flags


def register(g: flags.Group) -> None:
    p = g.command("serve", run_serve, "serve a run over an OpenAI-compatible HTTP API with a chat page",
                  "Serve RUN_DIR at /v1/completions, /v1/chat/completions and /v1/models (OpenAI-compatible, "
                  "streaming), with a chat page at / and the schema at /docs.")
    p.add_argument("run_dir", help=flags.TRAINED_RUN)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    flags.number(p, "--port", lo=1, hi=65535, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every request")
    flags.number(p, "--max-batch", lo=1, default=32, help="most sequences decoded together (default 32)")
    flags.number(p, "--threads", lo=0, hi=flags.MAX_THREADS, default=0,
                 help="torch CPU threads for decoding (default 0 = torch's choice)")
    p.add_argument("--encoder", default=None, metavar="MODEL",
                   help="also serve POST /v1/embeddings with this encoder (all-MiniLM-L6-v2, a BERT run or HF folder)")
    flags.number(p, "--drain-seconds", type=float, lo=0, hi=3600, default=30.0,
                 help="on SIGTERM or Ctrl-C, let running streams finish for up to this long, then end them "
                      "cleanly (default 30)")
    flags.draft(p, "requests with penalties, response_format or tools")
    p.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                   help="compute every prompt in full (default: requests sharing a prefix, such as a system prompt, "
                        "reuse its keys and values; Transformer runs without --draft)")
    flags.number(p, "--prefix-cache-mb", type=float, lo=0, default=256.0, metavar="MB",
                 help="memory for the prefix cache's keys and values, least recently used evicted (default 256)")
    flags.device(p)
    flags.dtype(p)


def run_serve(a) -> None:
    from ..serve import serve
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    serve(a.run_dir, host=a.host, port=a.port, api_key=a.api_key, device=a.device, max_batch=a.max_batch,
          encoder=a.encoder, drain_seconds=a.drain_seconds, draft=a.draft, draft_tokens=a.draft_tokens,
          prefix_cache=a.prefix_cache, prefix_cache_mb=a.prefix_cache_mb, dtype=a.dtype)
