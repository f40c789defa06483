"""The JSON API and page behind `charlm serve`: generate (streamed), score, runs.

Every answer to a bad request is a 4xx JSON object {"error": "<one line>"}; the work itself is
charlm's library (charlm.inference), so the page gives the same text and figures as the CLI.
"""

from __future__ import annotations

import asyncio
import difflib
import ipaddress
import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charlm.errors import CharLMError

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
except ImportError as exc:  # the optional extra is missing: one line, not a traceback
    raise CharLMError("charlm serve needs its extra: pip install 'charlm[serve]'") from exc

STATIC = Path(__file__).with_name("static")
MAX_BODY_BYTES = 1 << 20  # a request past this is refused before it is parsed
MAX_LENGTH = 10_000  # characters one request may generate
TOP_ALTERNATIVES = 5


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def find_runs(paths: list[Path]) -> dict[str, Path]:
    """Run folders by display name: the folders given, or every run under ./runs."""
    if not paths:
        root = Path("runs")
        paths = sorted(p for p in root.iterdir() if p.is_dir() and (p / "config.yaml").is_file()) \
            if root.is_dir() else []
        if not paths:
            raise CharLMError("no runs to serve: pass run folders (charlm serve runs/rnn) or train one first")
    runs: dict[str, Path] = {}
    for path in paths:
        if not path.is_dir() or not ((path / "best.pt").is_file() or (path / "last.pt").is_file()):
            raise CharLMError(f"{path} is not a run folder (no best.pt or last.pt)")
        name, n = path.name, 2
        while name in runs:
            name, n = f"{path.name}-{n}", n + 1
        runs[name] = path
    return runs


@dataclass
class _Cached:
    stamp: tuple[str, int]
    loaded: Any
    lock: threading.Lock


class RunModels:
    """Each run's model, loaded once and again only when its checkpoint file changes."""

    def __init__(self, runs: dict[str, Path]):
        self.runs = runs
        self._cache: dict[str, _Cached] = {}
        self._guard = threading.Lock()

    def folder(self, name: str | None) -> tuple[str, Path]:
        if name is None:
            name = next(iter(self.runs))
        if not isinstance(name, str) or name not in self.runs:
            raise BadRequest(f"unknown run {name!r}; runs: {', '.join(self.runs)}", 404)
        path = self.runs[name]
        if not path.is_dir():
            raise BadRequest(f"the run folder {path} is gone", 404)
        return name, path

    def get(self, name: str | None):
        from charlm.checkpoint import checkpoint_file, load_model

        name, path = self.folder(name)
        try:
            file = checkpoint_file(path)
            stamp = (str(file), file.stat().st_mtime_ns)
        except (CharLMError, OSError):
            raise BadRequest(f"the run folder {path} holds no checkpoint now", 404) from None
        with self._guard:
            cached = self._cache.get(name)
            if cached is None or cached.stamp != stamp:
                cached = _Cached(stamp, load_model(file), threading.Lock())
                self._cache[name] = cached
        return cached.loaded, cached.lock


async def _body(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadRequest(f"request body over {MAX_BODY_BYTES:,} bytes", 413)
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise BadRequest(f"request body over {MAX_BODY_BYTES:,} bytes", 413)
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


GENERATE_FIELDS = ("run", "prefix", "strategy", "temperature", "top_k", "top_p", "length", "seed", "stop", "stream")
SCORE_FIELDS = ("run", "text")


def _only(body: dict, fields: tuple[str, ...]) -> None:
    """A misspelt field is an error naming the closest one, never silently ignored."""
    for key in body:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise BadRequest(f"unknown field {key!r}{hint} (fields: {', '.join(fields)})")


def _field(body: dict, key: str, kind: type | tuple, default=None, lo=None, hi=None):
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise BadRequest(f"{key} must be {names}, got {json.dumps(value)[:40]}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f"{key} must be finite")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise BadRequest(f"{key} must be between {lo} and {hi}, got {value}")
    return value


class _Stopped(Exception):
    """The client went away (the page's Stop button): end the generation early."""


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def create_app(runs: dict[str, Path]) -> Starlette:
    models = RunModels(runs)

    async def index(request):
        return FileResponse(STATIC / "index.html")

    async def list_runs(request):
        return JSONResponse({"runs": [_describe(name, path) for name, path in runs.items() if path.is_dir()]})

    async def run_metrics(request):
        name, path = models.folder(request.path_params["name"])
        return JSONResponse(_describe(name, path, rows=True))

    async def score(request):
        from charlm.inference import score_checkpoint

        body = await _body(request)
        _only(body, SCORE_FIELDS)
        text = _field(body, "text", str)
        if not text:
            raise BadRequest("give the text to score")
        loaded, lock = models.get(_field(body, "run", str))

        def work():
            with lock:
                return score_checkpoint(loaded, text, top=TOP_ALTERNATIVES)

        result = await asyncio.to_thread(work)
        return JSONResponse({"tokens": result.tokens, "surprisal_bits": result.surprisal_bits,
                             "alternatives": result.alternatives, "total_bits": result.total_bits,
                             "bits_per_token": result.total_bits / max(1, len(result.tokens) - 1),
                             "perplexity": result.perplexity, "unknown": result.unknown})

    async def generate(request):
        body = await _body(request)
        _only(body, GENERATE_FIELDS)
        options = dict(prefix=_field(body, "prefix", str), strategy=_field(body, "strategy", str),
                       temperature=_field(body, "temperature", (int, float), lo=0, hi=100),
                       top_k=_field(body, "top_k", int, lo=1, hi=1 << 20),
                       top_p=_field(body, "top_p", (int, float), lo=0, hi=1),
                       length=_field(body, "length", int, lo=1, hi=MAX_LENGTH),
                       seed=_field(body, "seed", int, lo=-(1 << 63), hi=(1 << 64) - 1),
                       stop=_field(body, "stop", str))
        stream = body.get("stream", True)
        if not isinstance(stream, bool):
            raise BadRequest("stream must be true or false")
        loaded, lock = models.get(_field(body, "run", str))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def put(kind, data):
            loop.call_soon_threadsafe(events.put_nowait, (kind, data))

        def on_token(step, tokens):
            if stop.is_set():
                raise _Stopped
            put("token", {"text": tokens[0]})

        def work():
            from charlm.inference import generate_from_checkpoint

            try:
                with lock:
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

        threading.Thread(target=work, daemon=True).start()
        head = []
        while True:  # errors (a bad prefix, say) come before the first token: answer them as 4xx
            kind, data = await events.get()
            if kind == "error":
                return JSONResponse({"error": data["error"]}, status_code=data.get("status", 400))
            head.append((kind, data))
            if kind != "prefix":
                break
        if not stream:
            while head[-1][0] not in ("done", "stopped"):
                head.append(await events.get())
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
                            Exception: internal_error})


def _describe(name: str, path: Path, rows: bool = False) -> dict[str, Any]:
    """A run as the page shows it: its config, its best validation perplexity, its curves."""
    import yaml

    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        config = None
    metrics = []
    try:
        with open(path / "metrics.jsonl", encoding="utf-8") as handle:
            for line in handle:
                try:
                    metrics.append(json.loads(line))
                except ValueError:  # a row being written right now
                    continue
    except OSError:
        pass
    vals = [r["val_perplexity"] for r in metrics if isinstance(r.get("val_perplexity"), (int, float))]
    out = {"name": name, "path": str(path), "config": config, "steps": metrics[-1].get("step") if metrics else 0,
           "best_val_perplexity": min(vals) if vals else None}
    if rows:
        out["metrics"] = metrics
    return out


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

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise CharLMError(f"--host {host!r} is not an address of this machine") from None
    family, kind, _, _, address = infos[0]
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise CharLMError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port") from None


def run_server(runs: dict[str, Path], host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(create_app(runs), host=host, port=port, log_level="warning")
