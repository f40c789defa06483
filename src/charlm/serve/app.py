"""The JSON API and page behind `charlm serve`: generate (streamed), score, runs.

Every answer to a bad request is a 4xx JSON object {"error": "<one line>"}; the work itself is
charlm's library (charlm.inference), so the page gives the same text and figures as the CLI.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
from pathlib import Path

import anyio

from charlm.errors import CharLMError

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
except ImportError as exc:  # the optional extra is missing: one line, not a traceback
    raise CharLMError("charlm serve needs its extra: pip install 'charlm[serve]'") from exc

from charlm.serve import guard  # noqa: E402 -- after the extra's check
from charlm.serve.fields import BadRequest, field, only_fields, read_body  # noqa: E402
from charlm.serve.runs import RunModels, describe_run  # noqa: E402

STATIC = Path(__file__).with_name("static")
MAX_LENGTH = 10_000  # characters one request may generate
TOP_ALTERNATIVES = 5
# Each endpoint's fields: any other is a misspelling, answered with the closest.
GENERATE_FIELDS = ("run", "prefix", "strategy", "temperature", "top_k", "top_p", "length", "seed", "stop", "stream")
SCORE_FIELDS = ("run", "text")
# Model work runs in threads, this many at once (each model's lock makes its own work one at a
# time); requests past it wait without holding a thread. Reading run folders has anyio's own pool.
MODEL_THREADS = 4
POLL_SECONDS = 0.25  # how often a non-streaming generate checks that its client is still there


class _Stopped(Exception):
    """The client went away (the page's Stop button): end the generation early."""


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class _Gone(Exception):
    """A non-streaming client left before its answer was ready."""


def create_app(runs: dict[str, Path], host: str = "127.0.0.1") -> Starlette:
    """The app for `runs`; `host` is the address served, answered as a Host name besides loopback."""
    models = RunModels(runs)
    limiter: list[anyio.CapacityLimiter] = []  # made on first use: it belongs to the running event loop

    def in_model_thread(fn):
        if not limiter:
            limiter.append(anyio.CapacityLimiter(MODEL_THREADS))
        return anyio.to_thread.run_sync(fn, limiter=limiter[0])

    async def index(request):
        return FileResponse(STATIC / "index.html")

    def all_runs():
        return {"runs": [describe_run(name, path) for name, path in runs.items() if path.is_dir()]}

    async def list_runs(request):
        return JSONResponse(await run_in_threadpool(all_runs))

    async def run_metrics(request):
        name, path = models.folder(request.path_params["name"])
        return JSONResponse(await run_in_threadpool(describe_run, name, path, rows=True))

    async def score(request):
        from charlm.inference import score_checkpoint

        body = await read_body(request)
        only_fields(body, SCORE_FIELDS)
        text = field(body, "text", str)
        if not text:
            raise BadRequest("give the text to score")
        run_name = field(body, "run", str)
        loaded, lock = await in_model_thread(lambda: models.get(run_name))

        def work():
            with lock:
                return score_checkpoint(loaded, text, top=TOP_ALTERNATIVES)

        result = await in_model_thread(work)
        return JSONResponse({"tokens": result.tokens, "surprisal_bits": result.surprisal_bits,
                             "alternatives": result.alternatives, "total_bits": result.total_bits,
                             "bits_per_token": result.total_bits / max(1, len(result.tokens) - 1),
                             "perplexity": result.perplexity, "unknown": result.unknown})

    async def generate(request):
        body = await read_body(request)
        only_fields(body, GENERATE_FIELDS)
        options = dict(prefix=field(body, "prefix", str), strategy=field(body, "strategy", str),
                       temperature=field(body, "temperature", (int, float), lo=0, hi=100),
                       top_k=field(body, "top_k", int, lo=1, hi=1 << 20),
                       top_p=field(body, "top_p", (int, float), lo=0, hi=1),
                       length=field(body, "length", int, lo=1, hi=MAX_LENGTH),
                       seed=field(body, "seed", int, lo=-(1 << 63), hi=(1 << 64) - 1),
                       stop=field(body, "stop", str))
        stream = body.get("stream", True)
        if not isinstance(stream, bool):
            raise BadRequest("stream must be true or false")
        run_name = field(body, "run", str)
        loaded, lock = await in_model_thread(lambda: models.get(run_name))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def put(kind, data):
            loop.call_soon_threadsafe(events.put_nowait, (kind, data))

        def on_token(step, tokens):
            if stop.is_set():
                raise _Stopped
            if stream:  # a non-streaming answer waits for "done" alone, checking that its client is there
                put("token", {"text": tokens[0]})

        def work():
            from charlm.inference import generate_from_checkpoint

            try:
                with lock:
                    if stop.is_set():  # abandoned while it waited for the model
                        raise _Stopped
                    run = generate_from_checkpoint(loaded, on_prefix=lambda t: put("prefix", {"text": t}),
                                                   on_token=on_token, **options)
                result = run.result
                put("done", {"prefix": result.prefix, "continuation": result.continuations[0],
                             "seed": result.seed, "warnings": run.warnings})
            except _Stopped:
                put("stopped", {})
            except CharLMError as exc:
                put("error", {"error": str(exc)})
            except Exception as exc:  # noqa: BLE001 -- the server keeps serving whatever a model does
                put("error", {"error": f"generation failed ({type(exc).__name__})", "status": 500})

        task = asyncio.ensure_future(in_model_thread(work))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # the work reports its own errors

        async def next_event():
            """The work's next event; once the client has left, _Gone (and the work told to stop)."""
            getter = asyncio.ensure_future(events.get())
            while True:
                done, _ = await asyncio.wait({getter}, timeout=POLL_SECONDS)
                if done:
                    return getter.result()
                if await request.is_disconnected():
                    getter.cancel()
                    stop.set()
                    raise _Gone

        head = []
        try:
            while True:  # errors (a bad prefix, say) come before the first token: answer them as 4xx
                kind, data = await next_event()
                if kind == "error":
                    return JSONResponse({"error": data["error"]}, status_code=data.get("status", 400))
                head.append((kind, data))
                if kind != "prefix":
                    break
            while not stream and head[-1][0] not in ("done", "stopped"):
                head.append(await next_event())
        except _Gone:
            return JSONResponse({"error": "the client left"}, status_code=499)
        if not stream:
            done = head[-1][1]
            return JSONResponse({**done, "text": done["prefix"] + done["continuation"]})

        async def events_out():
            try:
                for kind, data in head:
                    yield _sse(kind, data)
                kind = head[-1][0]
                while kind not in ("done", "stopped", "error"):
                    kind, data = await events.get()
                    yield _sse(kind, data)
            finally:  # the client left (Stop) or the stream ended: either way the work ends
                stop.set()

        return StreamingResponse(events_out(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    async def bad_request(request, exc: BadRequest):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    async def library_error(request, exc: CharLMError):
        return JSONResponse({"error": str(exc)}, status_code=400)

    async def http_error(request, exc: HTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    async def internal_error(request, exc: Exception):
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    return Starlette(
        routes=[Route("/", index), Route("/api/runs", list_runs), Route("/api/runs/{name}", run_metrics),
                Route("/api/score", score, methods=["POST"]), Route("/api/generate", generate, methods=["POST"]),
                Mount("/static", StaticFiles(directory=STATIC), name="static")],
        exception_handlers={BadRequest: bad_request, CharLMError: library_error, HTTPException: http_error,
                            Exception: internal_error},
        middleware=guard.middleware(host))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(host: str, port: int) -> None:
    """Fail with one line before starting when the address cannot be listened on."""
    import socket

    if len(host) > guard.MAX_HOST_CHARS:
        raise CharLMError(f"--host is {len(host):,} characters; a host name or address has at most "
                          f"{guard.MAX_HOST_CHARS}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise CharLMError(f"--host {host[:60]!r} is not an address of this machine") from None
    family, kind, _, _, address = infos[0]
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise CharLMError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port") from None


def run_server(runs: dict[str, Path], host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(create_app(runs, host), host=host, port=port, log_level="warning", **guard.server_options())
