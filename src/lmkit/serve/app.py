"""An OpenAI-compatible HTTP server over one run directory (FastAPI + uvicorn).

    GET  /health               liveness and load
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
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from ..api import load
from ..errors import LmkitError
from ..runs import CAUSAL
from ..search import Encoder
from .errors import MAX_BODY_BYTES, ApiError, RequestLimits, error_response, install
from .protocol import uvicorn_config
from .responses import ChoiceBuilder, chunk, completion_body
from .scheduler import Scheduler
from .schemas import ChatRequest, CompletionRequest, EmbeddingRequest, SamplingFields, StrictModel


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
               encoder=None) -> FastAPI:
    """The app for a loaded `lmkit.LM`; the scheduler thread starts and stops with it. With an
    `lmkit.search.Encoder`, /v1/embeddings serves its mean-pooled, L2-normalised sentence vectors."""
    model_id = lm.path.name if lm.path is not None else "lmkit"
    block = lm.model.config.block_size
    scheduler = Scheduler(lm.model, lm.tokenizer, max_batch=max_batch)

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
        rows = _rows(req, prompts, req.max_tokens, req.logprobs, req.stops())
        return await _respond(req, rows, "text_completion", request)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        if req.top_logprobs and not req.logprobs:  # OpenAI: "logprobs must be set to true if this parameter is used"
            raise ApiError(400, "top_logprobs: needs logprobs: true", param="top_logprobs")
        text, stops = lm.chat_prompt([(m.role, m.text()) for m in req.messages])
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        rows = _rows(req, [text], max_tokens, logprobs, req.stops() + stops, field="messages")
        return await _respond(req, rows, "chat.completion", request)

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
            rows += [(ids, cfg)] * req.n  # the n rows of a prompt share one config: seeds seed, seed+1, …
        return rows

    async def _respond(req: SamplingFields, rows, kind: str, request: Request):
        builder = ChoiceBuilder(lm.tokenizer, kind, model_id, f"{'chatcmpl' if kind != 'text_completion' else 'cmpl'}-"
                                f"{uuid.uuid4().hex[:24]}", int(time.time()), len(rows))
        if all(cfg.max_new_tokens == 0 for _, cfg in rows):
            return JSONResponse(completion_body(builder, sum(len(ids) for ids, _ in rows[::req.n])))
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
                        err = {"message": f"internal error: {type(item).__name__}", "type": "server_error"}
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


def serve(run_dir: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          device: str = "cpu", max_batch: int = 32, encoder: str | None = None) -> None:
    """Load a run directory and serve it until Ctrl-C."""
    lm = load(run_dir, device=device, families=CAUSAL, purpose="serve")
    if encoder is not None:
        encoder = Encoder(encoder, max_len=512)
    app = create_app(lm, api_key=api_key, max_batch=max_batch, encoder=encoder)
    print(f"serving {run_dir} at http://{host}:{port}/  (chat page at /, OpenAI API at /v1, schema at /docs)",
          flush=True)
    uvicorn.Server(uvicorn_config(app, host=host, port=port)).run()
