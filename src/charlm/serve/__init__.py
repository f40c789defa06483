"""`charlm serve`: a local web page and JSON API over trained runs (needs the `serve` extra)."""

from charlm.serve.app import MAX_BODY_BYTES, MAX_LENGTH, check_port, create_app, find_runs, is_loopback, run_server

__all__ = ["MAX_BODY_BYTES", "MAX_LENGTH", "check_port", "create_app", "find_runs", "is_loopback", "run_server"]
