"""`charlm serve`: a local web page and JSON API over trained runs (needs the `serve` extra)."""

from charlm.serve.app import MAX_LENGTH, check_port, create_app, is_loopback, run_server
from charlm.serve.fields import MAX_BODY_BYTES
from charlm.serve.runs import find_runs

__all__ = ["MAX_BODY_BYTES", "MAX_LENGTH", "check_port", "create_app", "find_runs", "is_loopback", "run_server"]
