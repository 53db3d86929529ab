"""The ASGI app (starlette): model listing, inference, text/generation front-ends, probes and metrics.

Every refused request is answered with a JSON body `{"error": {"status": CODE, "message": "..."}}`
naming what is wrong; an engine failure is a 500 for that request only.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from functools import partial

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edgecompile.errors import EdgeCompileError
from edgecompile.serve.batcher import Batcher
from edgecompile.serve.codec import (
    JSON,
    NPY,
    NPZ,
    RequestError,
    encode,
    feeds_from_binary,
    feeds_from_json,
    media_type,
    parse_json,
    to_jsonable,
)
from edgecompile.serve.metrics import Metrics

log = logging.getLogger("edgecompile.serve")

# Keyword arguments of Runner.generate/stream a client may set (the contract's names).
GENERATE_KEYS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "seed", "num_beams",
                 "length_penalty", "stop")
OPEN_PATHS = ("/healthz", "/readyz")        # probes answer without the bearer token


@dataclass
class ServedModel:
    name: str
    manifest: dict
    batcher: Batcher

    @property
    def runner(self):
        return self.batcher.runners[0]

    def describe(self) -> dict:
        m = self.manifest
        b = self.batcher
        return {
            "name": self.name,
            "inputs": [s.to_dict() for s in b.inputs],
            "outputs": [s.to_dict() for s in b.outputs],
            "precision": m.get("precision"),
            "backend": m.get("backend"),
            "target": m.get("target"),
            "bundle_id": m.get("bundle_id"),
            "frontend": (m.get("frontend") or {}).get("kind"),
            "batching": {
                "enabled": b.batching,
                "max_batch_size": b.max_batch_size,
                "max_queue_delay_ms": b.delay * 1e3,
                "instances": len(b.runners),
                "max_queue": b.max_queue,
                "inline": b.inline,
            },
        }


@dataclass
class ServeState:
    models: dict[str, ServedModel]
    metrics: Metrics
    max_body_bytes: int
    ready: bool = False
    draining: bool = False
    started: float = field(default_factory=time.time)


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status, headers=headers)


class BearerAuth:
    """Pure ASGI middleware: every HTTP path but the probes needs `Authorization: Bearer TOKEN`."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, value = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(value.strip(), self.token):
                resp = error(401, "missing or wrong bearer token (send 'Authorization: Bearer TOKEN')",
                             headers={"WWW-Authenticate": "Bearer"})
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(models: dict[str, ServedModel], *, metrics: Metrics, max_body_mb: float = 64.0,
               token: str | None = None, cors_origins: tuple[str, ...] = ()) -> Starlette:
    state = ServeState(models, metrics, int(max_body_mb * 2**20))
    for name in models:
        metrics.add_model(name)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for m in models.values():
            m.batcher.start()
        state.ready = True
        yield
        state.draining = True
        await asyncio.gather(*(m.batcher.drain() for m in models.values()))

    middleware = []
    if cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                                     allow_headers=["Authorization", "Content-Type"]))
    if token:
        middleware.append(Middleware(BearerAuth, token=token))

    async def http_error(request, exc: HTTPException):
        return error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", headers=exc.headers)

    routes = [
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/readyz", partial(_readyz, state), methods=["GET"]),
        Route("/metrics", partial(_metrics, state), methods=["GET"]),
        Route("/v1/models", partial(_list, state), methods=["GET"]),
        Route("/v1/models/{name}", partial(_describe, state), methods=["GET"]),
        Route("/v1/models/{name}/infer", partial(_infer, state), methods=["POST"]),
        Route("/v1/models/{name}/generate", partial(_generate, state), methods=["POST"]),
        Route("/v1/chat/completions", partial(_chat, state), methods=["POST"]),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error})
    app.state.serve = state
    return app


async def _healthz(request):
    return JSONResponse({"status": "ok"})


async def _metrics(state: ServeState, request):
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _list(state: ServeState, request):
    return JSONResponse({"models": [m.describe() for m in state.models.values()]})


async def _readyz(state: ServeState, request) -> JSONResponse:
    if state.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    if not state.ready:
        return JSONResponse({"status": "loading"}, status_code=503)
    return JSONResponse({"status": "ready", "models": sorted(state.models)})


def _model(state: ServeState, name: str) -> ServedModel:
    model = state.models.get(name)
    if model is None:
        raise RequestError(404, f"unknown model {name!r}; served models: {sorted(state.models)}")
    return model


async def _describe(state: ServeState, request: Request):
    try:
        return JSONResponse(_model(state, request.path_params["name"]).describe())
    except RequestError as exc:
        return error(exc.status, exc.message)


async def _read_body(state: ServeState, request: Request) -> bytes:
    cap = state.max_body_bytes
    limit_msg = f"request body larger than the server's limit of {cap / 2**20:g} MiB (--max-body-mb)"
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise RequestError(400, f"invalid Content-Length header {length!r}")
        if int(length) > cap:
            raise RequestError(413, limit_msg)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise RequestError(413, limit_msg)
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError(400, "client disconnected before sending the whole body") from None
    return b"".join(chunks)


_OUTCOME = {429: "rejected", 504: "timeout"}


async def _infer(state: ServeState, request: Request):
    t0 = time.perf_counter()
    name = request.path_params["name"]
    if name not in state.models:
        return error(404, f"unknown model {name!r}; served models: {sorted(state.models)}")
    m = state.metrics
    m.in_flight.labels(name).inc()
    try:
        model = state.models[name]
        body = await _read_body(state, request)
        kind = media_type(request.headers.get("content-type"))
        if kind in (NPY, NPZ):
            feeds = feeds_from_binary(body, kind, model.batcher.inputs)
        elif kind == JSON:
            doc = parse_json(body)
            if isinstance(doc, dict) and "texts" in doc and "inputs" not in doc:
                payload = await _texts(model, doc["texts"])
                m.requests.labels(name, "success").inc()
                m.request_duration.labels(name).observe(time.perf_counter() - t0)
                return JSONResponse(payload)
            feeds = feeds_from_json(doc, model.batcher.inputs)
        else:
            raise RequestError(415, f"unsupported Content-Type {kind!r}; send application/json, {NPY} or {NPZ}")
        outs = await model.batcher.submit(feeds)
        data, mt = encode(outs, kind)
        m.requests.labels(name, "success").inc()
        m.request_duration.labels(name).observe(time.perf_counter() - t0)
        return Response(data, media_type=mt)
    except RequestError as exc:
        m.requests.labels(name, _OUTCOME.get(exc.status, "error" if exc.status >= 500 else "bad_request")).inc()
        return error(exc.status, exc.message, exc.headers)
    except Exception as exc:             # a bug of ours: still one request, one line in the log
        log.error("internal error on %s: %s: %s", request.url.path, exc.__class__.__name__, exc)
        m.requests.labels(name, "error").inc()
        return error(500, f"internal error: {exc.__class__.__name__}: {exc}")
    finally:
        m.in_flight.labels(name).dec()


# -- text and generation front-ends (Runner.encode/classify/generate/stream) ---------------------------

def _front_error(exc: Exception) -> RequestError:
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, EdgeCompileError):
        # BundleError: the bundle has no such front-end; DataError/ConfigError: the request's arguments.
        return RequestError(400, exc.message)
    return RequestError(500, f"engine error: {exc.__class__.__name__}: {exc}")


async def _in_thread(fn, *args, **kw):
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(None, lambda: fn(*args, **kw))
    except Exception as exc:
        raise _front_error(exc) from None


async def _texts(model: ServedModel, texts) -> dict:
    pair = lambda t: isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) for x in t)  # noqa: E731
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) or pair(t) for t in texts):
        raise RequestError(400, '"texts" must be a non-empty list of strings (or of [first, second] pairs)')
    task = (model.manifest.get("frontend") or {}).get("task")
    if task in ("classification", "text-classification"):
        return {"results": to_jsonable(await _in_thread(model.runner.classify, texts))}
    return {"embeddings": to_jsonable(await _in_thread(model.runner.encode, texts))}


def _generate_kwargs(doc: dict, mapping: dict | None = None) -> dict:
    kw = {}
    for key, value in doc.items():
        key = (mapping or {}).get(key, key)
        if key in GENERATE_KEYS and value is not None:
            kw[key] = value
    return kw


async def _json_body(state: ServeState, request: Request) -> dict:
    kind = media_type(request.headers.get("content-type"))
    if kind != JSON:
        raise RequestError(415, f"unsupported Content-Type {kind!r}; send application/json")
    doc = parse_json(await _read_body(state, request))
    if not isinstance(doc, dict):
        raise RequestError(400, "JSON body must be an object")
    return doc


def _sse(obj) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _stream(model: ServedModel, prompt, kw: dict, frame):
    """SSE body: one `data:` event per piece (frame(piece)), an `error` event on failure, then [DONE]."""
    async def events():
        try:
            async for piece in iterate_in_threadpool(iter(model.runner.stream(prompt, **kw))):
                yield _sse(frame(piece))
        except Exception as exc:
            err = _front_error(exc)
            yield b"event: error\n" + _sse({"error": {"status": err.status, "message": err.message}})
        yield b"data: [DONE]\n\n"
    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _generate(state: ServeState, request: Request):
    try:
        model = _model(state, request.path_params["name"])
        doc = await _json_body(state, request)
        prompt = doc.get("messages", doc.get("prompt"))
        if not isinstance(prompt, (str, list)) or not prompt:
            raise RequestError(400, 'body needs "prompt" (a string) or "messages" (a list of {"role", "content"})')
        kw = _generate_kwargs(doc)
        if doc.get("stream"):
            if model.manifest.get("frontend", {}).get("kind") != "generation":
                raise RequestError(400, f"model {model.name!r} has no generation front-end")
            return _stream(model, prompt, kw, lambda piece: {"text": piece})
        return JSONResponse({"text": await _in_thread(model.runner.generate, prompt, **kw)})
    except RequestError as exc:
        return error(exc.status, exc.message, exc.headers)


async def _chat(state: ServeState, request: Request):
    """OpenAI-style chat completions over Runner.generate/stream."""
    try:
        doc = await _json_body(state, request)
        name = doc.get("model")
        if name is None and len(state.models) == 1:
            name = next(iter(state.models))
        if not isinstance(name, str):
            raise RequestError(400, f'body needs "model" (one of {sorted(state.models)})')
        model = _model(state, name)
        messages = doc.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise RequestError(400, '"messages" must be a non-empty list of {"role": str, "content": str}')
        kw = _generate_kwargs(doc, {"max_tokens": "max_new_tokens"})
        if kw.get("temperature", 0) and "do_sample" not in kw:
            kw["do_sample"] = True
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": cid, "created": created, "model": name}
        if doc.get("stream"):
            if model.manifest.get("frontend", {}).get("kind") != "generation":
                raise RequestError(400, f"model {name!r} has no generation front-end")
            return _stream(model, messages, kw, lambda piece: {
                **head, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
        text = await _in_thread(model.runner.generate, messages, **kw)
        return JSONResponse({**head, "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
    except RequestError as exc:
        return error(exc.status, exc.message, exc.headers)
