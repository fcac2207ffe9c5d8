"""An OpenAI-compatible HTTP server over one run directory (FastAPI + uvicorn).

    GET  /health               liveness and load
    GET  /metrics              Prometheus text format: requests, tokens, batch size, queue wait, TTFT, tokens/s
    GET  /v1/models            the one model served (its id is the run directory's name)
    POST /v1/completions       text continuation, streaming (server-sent events) or not
    POST /v1/chat/completions  chat, streaming or not
    POST /v1/embeddings        sentence embeddings, when started with an encoder (`--encoder`)
    GET  /                     the chat page;  /docs, /openapi.json: the schema

Every error is an OpenAI-style object {"error": {"message", "type", "param", "code"}} with a 4xx
status (errors.py): a field the server does not know, or an OpenAI field it does not implement, is a
400 naming it (schemas.py); a body over 1 MiB is 413, chunked or not; request headers over 32 KiB are
431 (protocol.py, the uvicorn settings `serve()` uses). With an API key, a request without
`Authorization: Bearer KEY` gets 401 (the static chat page itself is open: it holds no data and asks
for the key).

Requests that share a prompt prefix (a system prompt, few-shot examples) reuse its keys and values: a
prefix cache (prefix_cache.py) of `prefix_cache_mb` MiB, on by default for Transformer runs decoded
without a draft model; `lmkit serve --no-prefix-cache` turns it off. /metrics counts its hits.

`serve()` shuts down gracefully on SIGTERM (or Ctrl-C): no new connections, waiting requests get a 503,
running streams decode on for up to `drain_seconds` and are then ended cleanly (finish_reason "length",
then [DONE]); the process exits once every response is out.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import json
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse

from ..api import load
from ..errors import LmkitError
from ..grammar import json_grammar, tool_grammar
from ..prefix_cache import DEFAULT_MB, PrefixCache
from ..runs import CAUSAL
from ..search import Encoder
from ..speculative import DRAFT_TOKENS, unsupported
from .errors import MAX_BODY_BYTES, ApiError, RequestLimits, error_response, install
from .protocol import uvicorn_config
from .responses import ChoiceBuilder, chunk, completion_body
from .metrics import Metrics
from .scheduler import Scheduler
from .schemas import ChatRequest, CompletionRequest, EmbeddingRequest, SamplingFields
from .strict import StrictModel
from .terminal import fit_turns


class ApiKey:
    """ASGI middleware: with a key, every path but the chat page needs `Authorization: Bearer KEY`."""

    def __init__(self, app, key: str | None):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.key and scope["path"] != "/":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, f"Bearer {self.key}".encode()):
                return await error_response(401, "missing or incorrect API key (send Authorization: Bearer KEY)",
                                            code="invalid_api_key")(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(lm, api_key: str | None = None, max_batch: int = 32, max_body_bytes: int = MAX_BODY_BYTES,
               encoder=None, draft=None, draft_tokens: int = DRAFT_TOKENS, prefix_cache: bool = True,
               prefix_cache_mb: float = DEFAULT_MB) -> FastAPI:
    """The app for a loaded `lmkit.LM`; the scheduler thread starts and stops with it. With an
    `lmkit.search.Encoder`, /v1/embeddings serves its mean-pooled, L2-normalised sentence vectors. With a
    `draft` LM (same tokenizer), every request decodes speculatively (speculative.py). `prefix_cache`:
    reuse the K/V of shared prompt prefixes, up to `prefix_cache_mb` MiB (not with a draft, not for the LSTM)."""
    model_id = lm.path.name if lm.path is not None else "lmkit"
    block, vocab = lm.model.config.block_size, lm.model.config.vocab_size
    metrics = Metrics()
    cache = PrefixCache(lm.model, max_bytes=int(prefix_cache_mb * 2 ** 20)) if prefix_cache else None  # the scheduler
    # drops it for speculative sessions; for the LSTM it holds nothing
    scheduler = Scheduler(lm.model, lm.tokenizer, max_batch=max_batch, metrics=metrics,
                          session=lm.drafting(draft, draft_tokens), prefix_cache=cache)

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        yield
        scheduler.stop()

    app = FastAPI(title="lmkit", version="1", lifespan=lifespan,
                  description=f"OpenAI-compatible completions and chat for the lmkit run '{model_id}'.")
    app.state.scheduler = scheduler
    app.add_middleware(RequestLimits, limit=max_body_bytes)
    app.add_middleware(ApiKey, key=api_key)  # added last, so outermost: a request without the key is not read
    install(app, StrictModel)  # every error an OpenAI error object (errors.py)

    # ---- endpoints --------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page():
        return (resources.files("lmkit.serve") / "static" / "index.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "active_rows": scheduler.active_rows,
                "waiting": scheduler.inbox.qsize() + len(scheduler.waiting)}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        text = metrics.render(scheduler.active_rows, scheduler.inbox.qsize() + len(scheduler.waiting),
                              scheduler.prefix_cache)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    encoder_id = encoder.path.name if encoder is not None else None

    @app.get("/v1/models")
    async def models():
        ids = [model_id] + ([encoder_id] if encoder_id else [])
        return {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "lmkit"} for i in ids]}

    if encoder is not None:
        @app.post("/v1/embeddings")
        async def embeddings(req: EmbeddingRequest):
            if req.model != encoder_id:
                raise ApiError(404, f"model '{req.model}' does not exist; the embedding model is '{encoder_id}'",
                               param="model", code="model_not_found")
            texts = [req.input] if isinstance(req.input, str) else req.input
            if not texts or any(not t for t in texts):
                raise ApiError(400, "input: must be a non-empty string or a list of non-empty strings", param="input")
            ids = [encoder.tokenizer.encode(t) for t in texts]
            too_long = [i for i, x in enumerate(ids) if len(x) > encoder.max_len - 2]
            if too_long:
                raise ApiError(400, f"input[{too_long[0]}] is {len(ids[too_long[0]])} tokens; the encoder takes at "
                                    f"most {encoder.max_len - 2}", param="input", code="context_length_exceeded")
            vectors = await asyncio.to_thread(encoder.embed_ids, ids)
            n = sum(len(x) for x in ids)
            if req.encoding_format == "base64":
                encode = lambda v: base64.b64encode(v.astype("<f4").tobytes()).decode()  # noqa: E731
            else:
                encode = lambda v: v.tolist()  # noqa: E731
            return {"object": "list", "model": encoder_id, "usage": {"prompt_tokens": n, "total_tokens": n},
                    "data": [{"object": "embedding", "index": i, "embedding": encode(v)}
                             for i, v in enumerate(vectors)]}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise ApiError(400, "prompt: must not be an empty list", param="prompt")
        # off the event loop: a request's first JSON Schema or tools compile their grammar (grammar.py)
        rows = await asyncio.to_thread(_rows, req, prompts, req.max_tokens, req.logprobs, req.stops())
        return await _respond(req, rows, "text_completion", request)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        if req.top_logprobs and not req.logprobs:  # OpenAI: "logprobs must be set to true if this parameter is used"
            raise ApiError(400, "top_logprobs: needs logprobs: true", param="top_logprobs")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        messages, dropped = [(m.role, m.text()) for m in req.messages], 0
        if (problem := req.tool_problem()) is not None:
            raise ApiError(400, problem[1], param=problem[0])
        if req.tools or any(m.tool_calls or m.role == "tool" for m in req.messages):  # chat_tools.py, chat_jinja.py
            if req.truncate_history:
                raise ApiError(400, "truncate_history: not available with tools or tool messages",
                               param="truncate_history")
            tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
            text, stops = lm.chat_template.prompt([m.for_template() for m in req.messages], tools=tools)
        elif req.truncate_history:  # opted in: the oldest turns that leave no room for a reply go (system stays)
            text, stops, _, dropped = fit_turns(lm, messages, min_reply=max(1, min(max_tokens or block, block // 4)))
        else:
            text, stops = lm.chat_prompt(messages)
        rows = await asyncio.to_thread(_rows, req, [text], max_tokens, logprobs, req.stops() + stops, "messages")
        response = await _respond(req, rows, "chat.completion", request)
        if dropped:
            response.headers["X-Lmkit-Dropped-Messages"] = str(dropped)
        return response

    # ---- helpers ------------------------------------------------------------------------------------
    def _rows(req: SamplingFields, texts: list[str], max_tokens, logprobs, stops, field: str = "prompt"):
        if req.model != model_id:
            raise ApiError(404, f"model '{req.model}' does not exist; this server has '{model_id}'",
                           param="model", code="model_not_found")
        if len(texts) * req.n > max_batch:  # one request's rows are decoded together, in one batch
            raise ApiError(400, f"{len(texts)} prompt(s) x n={req.n} is {len(texts) * req.n} sequences; this server "
                                f"decodes at most {max_batch} at once", param="n" if req.n > 1 else field)
        rows = []
        for ids in map(lm.encode_prompt, texts):
            if len(ids) >= block:
                raise ApiError(400, f"prompt is {len(ids)} tokens; the model's context is {block} tokens, "
                                    f"with room for at least one new token", param=field,
                               code="context_length_exceeded")
            room = block - len(ids)  # max_tokens is capped by the context
            cfg = req.sampling(room if max_tokens is None else min(max_tokens, room), stops, logprobs)
            try:
                cfg.validate()
            except LmkitError as e:  # "seed must be in …": the message starts with the field's name
                name = {"max_new_tokens": "max_tokens"}.get(str(e).split(" ")[0], str(e).split(" ")[0])
                raise ApiError(400, str(e), param=name if name in type(req).model_fields else None)
            _check_constraints(cfg)
            rows += [(ids, cfg)] * req.n  # the n rows of a prompt share one config: seeds seed, seed+1, …
        return rows

    def _check_constraints(cfg) -> None:
        """A schema the grammar library cannot compile, a logit_bias token outside the vocabulary, or with a
        draft model a field speculative decoding does not serve: 400."""
        if draft is not None and (name := unsupported(cfg)) is not None:
            name = {"json_schema": "response_format"}.get(name, name)
            raise ApiError(400, f"{name}: not available on this server, which decodes with a draft model "
                                f"(speculative decoding)", param=name)
        if cfg.logit_bias and max(cfg.logit_bias) >= vocab:
            raise ApiError(400, f"logit_bias: token id {max(cfg.logit_bias)} is outside the vocabulary "
                                f"(ids 0..{vocab - 1})", param="logit_bias")
        if cfg.tools is not None:
            _check_tools(cfg.tools)
        if cfg.json_schema is not None:
            param = "response_format" if cfg.json_schema is True else "response_format.json_schema.schema"
            try:
                json_grammar(lm.tokenizer, vocab, cfg.json_schema)
            except LmkitError as e:
                raise ApiError(400, f"{param}: {str(e).removeprefix('json_schema: ')}", param=param)

    def _check_tools(spec) -> None:
        """Each function's parameters compile as a JSON Schema, and the calls' grammar compiles: else a 400."""
        choice, tools = spec
        for i, (_, params) in enumerate(tools):
            try:
                json_grammar(lm.tokenizer, vocab, params or True)
            except LmkitError as e:
                param = f"tools[{i}].function.parameters"
                raise ApiError(400, f"{param}: {str(e).removeprefix('json_schema: ')}", param=param)
        try:
            tool_grammar(lm.tokenizer, vocab, tools, choice)
        except LmkitError as e:
            raise ApiError(400, str(e), param="tools")

    async def _respond(req: SamplingFields, rows, kind: str, request: Request):
        spec = rows[0][1].tools
        builder = ChoiceBuilder(lm.tokenizer, kind, model_id, f"{'chatcmpl' if kind != 'text_completion' else 'cmpl'}-"
                                f"{uuid.uuid4().hex[:24]}", int(time.time()), len(rows),
                                tool_names=[name for name, _ in spec[1]] if spec else None)
        if all(cfg.max_new_tokens == 0 for _, cfg in rows):
            return JSONResponse(completion_body(builder, sum(len(ids) for ids, _ in rows[::req.n])))
        if scheduler.drain_by is not None:
            raise ApiError(503, "the server is shutting down", code="server_shutting_down", type="server_error")
        metrics.request("completions" if kind == "text_completion" else "chat", sum(len(ids) for ids, _ in rows))
        job = scheduler.submit(rows)
        if not req.stream:
            try:
                while (item := await job.queue.get()) is not None:
                    if isinstance(item, Exception):
                        raise item
                    builder.add(item)
            finally:
                job.cancel()
            return JSONResponse(completion_body(builder, sum(len(ids) for ids, _ in rows[::req.n])))
        usage = req.stream_options is not None and req.stream_options.include_usage

        async def events():
            try:
                for c in builder.opening_chunks():
                    yield f"data: {json.dumps(c, ensure_ascii=False)}\n\n"
                while (item := await job.queue.get()) is not None:
                    if isinstance(item, Exception):
                        err = ({"message": item.message, "type": item.type, "code": item.code}
                               if isinstance(item, ApiError) else
                               {"message": f"internal error: {type(item).__name__}", "type": "server_error"})
                        yield f"data: {json.dumps({'error': err})}\n\n"
                        return
                    c = builder.add(item)
                    if c is not None:
                        yield f"data: {json.dumps(c, ensure_ascii=False)}\n\n"
                if usage:
                    body = completion_body(builder, sum(len(ids) for ids, _ in rows[::req.n]))
                    yield f"data: {json.dumps(chunk(builder, [], usage=body['usage']))}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                job.cancel()  # a client that went away frees its rows at the scheduler's next step
        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


class GracefulServer(uvicorn.Server):
    """uvicorn's server, whose exit signal (SIGTERM, Ctrl-C) first starts the scheduler's drain."""

    def __init__(self, config, scheduler: Scheduler, drain_seconds: float):
        super().__init__(config)
        self.scheduler, self.drain_seconds = scheduler, drain_seconds

    def handle_exit(self, sig, frame) -> None:
        if self.scheduler.drain_by is None:
            self.scheduler.drain(self.drain_seconds)
        super().handle_exit(sig, frame)


def serve(run_dir: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          device: str = "cpu", max_batch: int = 32, encoder: str | None = None, drain_seconds: float = 30,
          draft: str | None = None, draft_tokens: int = DRAFT_TOKENS, prefix_cache: bool = True,
          prefix_cache_mb: float = DEFAULT_MB, dtype: str = "float32") -> None:
    """Load a run directory and serve it until SIGTERM or Ctrl-C (then drain: see the module's docstring).
    `draft`: a smaller run with the same tokenizer for speculative decoding. `prefix_cache`: see create_app.
    `dtype`: the weights' precision, as lmkit.load takes it."""
    lm = load(run_dir, device=device, families=CAUSAL, purpose="serve", dtype=dtype)
    if draft is not None:
        draft = load(draft, device=device, families=CAUSAL, purpose="serve --draft", dtype=dtype)
    if encoder is not None:
        encoder = Encoder(encoder, max_len=512)
    app = create_app(lm, api_key=api_key, max_batch=max_batch, encoder=encoder, draft=draft, draft_tokens=draft_tokens,
                     prefix_cache=prefix_cache, prefix_cache_mb=prefix_cache_mb)
    print(f"serving {run_dir} at http://{host}:{port}/  (chat page at /, OpenAI API at /v1, schema at /docs)",
          flush=True)
    config = uvicorn_config(app, host=host, port=port, timeout_graceful_shutdown=drain_seconds + 10)
    GracefulServer(config, app.state.scheduler, drain_seconds).run()
