"""A request body read within bounds, and its fields checked one by one: each problem is one line."""

from __future__ import annotations

import difflib
import json
import math

import anyio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.requests import Request

MAX_BODY_BYTES = 1 << 20  # a request past this is refused before it is parsed
BODY_SECONDS = 10


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


async def read_body(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadRequest(f"request body over {MAX_BODY_BYTES:,} bytes", 413)
    raw = bytearray()
    with anyio.move_on_after(BODY_SECONDS) as waited:  # a client that stops mid-body is not waited on forever
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                raise BadRequest(f"request body over {MAX_BODY_BYTES:,} bytes", 413)
    if waited.cancelled_caught:
        raise BadRequest(f"the request body did not arrive within {BODY_SECONDS} s", 408)
    raw = bytes(raw)
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not JSON") from None
    except RecursionError:
        raise BadRequest("the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def only_fields(body: dict, fields: tuple[str, ...]) -> None:
    """A misspelt field is an error naming the closest one, never silently ignored."""
    for key in body:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise BadRequest(f"unknown field {key!r}{hint} (fields: {', '.join(fields)})")


def field(body: dict, key: str, kind: type | tuple, default=None, lo=None, hi=None):
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
