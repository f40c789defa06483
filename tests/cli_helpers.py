"""Running the real command line in-process, the way every CLI test does."""

from typer.testing import CliRunner

from charlm.cli import app

# Wide, colourless output: tests assert on lines, never on Rich's wrapping or styles.
ENV = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), env=ENV)


def one_error_line(result, exit_code: int | None = 2) -> str:
    """The single `error:` line a user mistake must produce, with no traceback."""
    detail = f"exit {result.exit_code}: {result.exception!r}\n{result.output}"
    assert "Traceback" not in result.output, detail
    if exit_code is not None:
        assert result.exit_code == exit_code, detail
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), detail
    return lines[0]
