"""Tests for charlm.serve: the JSON API answers like the CLI, and bad requests get one 4xx line."""

import json
import time
import shutil
import socket

import pytest

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from charlm.config import load_config  # noqa: E402
from charlm.errors import CharLMError  # noqa: E402
from charlm.inference import generate_from_checkpoint, score_checkpoint  # noqa: E402
from charlm.serve import MAX_BODY_BYTES, check_port, create_app, find_runs, is_loopback  # noqa: E402
from charlm.train import train  # noqa: E402
from cli_helpers import invoke, one_error_line  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    cfg = load_config("tiny", [f"train.out={root / 'runs' / 'tiny'}", f"data.corpus={root / 'tm.txt'}",
                                "data.normalize=none", "generate.prefix=The"])
    from charlm.data.text import builtin_path

    (root / "tm.txt").write_text(builtin_path("timemachine").read_text(encoding="utf-8")[:20000])
    return train(cfg).run_dir


@pytest.fixture
def client(run_dir, tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(run_dir, copy)
    with TestClient(create_app(find_runs([copy])), base_url="http://127.0.0.1:8000") as c:
        c.run_folder = copy
        yield c


def events(response) -> list[tuple[str, dict]]:
    out = []
    for block in response.text.strip().split("\n\n"):
        kind, data = block.split("\n")
        out.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_streamed_generation_is_the_cli_text_for_the_same_seed(client):
    response = client.post("/api/generate", json={"prefix": "The Time", "length": 40, "seed": 7})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    stream = events(response)
    assert stream[0] == ("prefix", {"text": "The Time"})
    tokens = [d["text"] for k, d in stream if k == "token"]
    assert len(tokens) == 40 and stream[-1][0] == "done"
    expected = generate_from_checkpoint(client.run_folder, prefix="The Time", length=40, seed=7).result
    assert "".join(tokens) == expected.continuations[0] == stream[-1][1]["continuation"]
    plain = client.post("/api/generate", json={"prefix": "The Time", "length": 40, "seed": 7, "stream": False})
    assert plain.json()["text"] == "The Time" + expected.continuations[0]


def test_score_totals_equal_charlm_score_and_alternatives_are_the_likeliest(client):
    text = "The Time Traveller smiled"
    result = client.post("/api/score", json={"text": text}).json()
    expected = score_checkpoint(client.run_folder, text)
    assert result["tokens"] == expected.tokens and result["surprisal_bits"] == expected.surprisal_bits
    assert result["total_bits"] == expected.total_bits and result["perplexity"] == expected.perplexity
    assert result["alternatives"][0] is None
    for token, bits, top in zip(result["tokens"][1:], result["surprisal_bits"][1:], result["alternatives"][1:]):
        assert len(top) == 5 and [b for _, b in top] == sorted(b for _, b in top)
        assert top[0][1] <= bits + 1e-5  # nothing is likelier than the likeliest
        if token in [t for t, _ in top]:
            assert dict(top)[token] == pytest.approx(bits, abs=1e-4)


def test_runs_list_each_run_with_its_config_and_its_whole_split_best(client):
    runs = client.get("/api/runs").json()["runs"]
    assert [r["name"] for r in runs] == ["tiny"] and runs[0]["config"]["model"]["name"] == "rnn"
    summary_file = client.run_folder / "summary.json"
    summary = json.loads(summary_file.read_text())
    detail = client.get("/api/runs/tiny").json()
    assert detail["best_val_perplexity"] == summary["best_val_perplexity"] and detail["steps"] == 20
    summary_file.write_text(json.dumps({**summary, "best_val_perplexity": 3.25}))
    assert client.get("/api/runs/tiny").json()["best_val_perplexity"] == 3.25  # summary.json, not the log
    summary_file.unlink()  # still training: only the logged evaluations
    vals = [m["val_perplexity"] for m in detail["metrics"] if m.get("val_perplexity") is not None]
    assert vals and client.get("/api/runs/tiny").json()["best_val_perplexity"] == min(vals)


@pytest.mark.parametrize("body, status, phrase", [
    ({"prefix": "the \u2603"}, 400, "not in the vocabulary"),
    ({"length": 10 ** 9}, 400, "length must be between 1 and 10000"),
    ({"length": "ten"}, 400, "length must be int"),
    ({"temperature": True}, 400, "temperature must be"),
    ({"strategy": "nucleus"}, 400, "nucleus"),
    ({"run": "nope"}, 404, "unknown run 'nope'; runs: tiny"),
    ({"stream": "yes"}, 400, "stream must be true or false"),
    ({"lenght": 5}, 400, "unknown field 'lenght'; did you mean 'length'?"),
], ids=["unknown-chars", "huge-length", "length-type", "bool-temperature", "strategy", "run", "stream", "typo"])
def test_bad_generate_requests_get_one_4xx_line_and_the_server_keeps_serving(client, body, status, phrase):
    response = client.post("/api/generate", json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and phrase in response.json()["error"]
    assert "\n" not in response.json()["error"]
    assert client.post("/api/generate", json={"length": 3, "stream": False}).status_code == 200


def test_oversized_and_malformed_bodies_are_refused(client):
    big = client.post("/api/score", content=b'{"text": "' + b"a" * (MAX_BODY_BYTES + 10) + b'"}',
                      headers={"content-type": "application/json"})
    assert big.status_code == 413 and "over 1,048,576 bytes" in big.json()["error"]
    as_json = {"content-type": "application/json"}
    assert client.post("/api/score", content=b"{not json", headers=as_json).json() == {
        "error": "the request body is not JSON"}
    assert client.post("/api/score", json=["a"]).status_code == 400
    assert client.post("/api/score", json={"text": ""}).json()["error"] == "give the text to score"
    assert "unknown field 'txt'; did you mean 'text'?" in client.post("/api/score", json={"txt": "ab"}).json()["error"]
    long_text = client.post("/api/score", json={"text": "a" * 200_000})
    assert long_text.status_code == 400 and "charlm evaluate" in long_text.json()["error"]


def test_a_vanished_run_folder_is_a_404_not_a_500(client):
    shutil.rmtree(client.run_folder)
    for response in (client.post("/api/score", json={"text": "the"}), client.get("/api/runs/tiny"),
                     client.post("/api/generate", json={"length": 3})):
        assert response.status_code == 404 and "is gone" in response.json()["error"]
    assert client.get("/api/runs").json() == {"runs": []}


def test_the_page_and_its_assets_are_served_offline(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        body = client.get(asset).text
        assert client.get(asset).status_code == 200 and "https://" not in body and "http://" not in body


def test_only_loopback_counts_as_local():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")


def test_a_busy_port_and_a_folder_that_is_no_run_are_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(CharLMError, match=r"cannot listen on 127.0.0.1:\d+ .*pass another --port"):
            check_port("127.0.0.1", busy.getsockname()[1])
    assert "is not a run folder" in one_error_line(invoke("serve", str(tmp_path)))


def test_concurrent_requests_from_several_tabs_share_one_loaded_model(client, monkeypatch):
    import charlm.checkpoint
    from concurrent.futures import ThreadPoolExecutor

    expected = {seed: generate_from_checkpoint(client.run_folder, prefix="The", length=30, seed=seed).result
                for seed in range(6)}
    expected_bits = score_checkpoint(client.run_folder, "The Time").total_bits
    loads = []  # from here on, only the server loads
    real_load = charlm.checkpoint.load_model
    monkeypatch.setattr(charlm.checkpoint, "load_model", lambda file: loads.append(file) or real_load(file))

    def tab(seed):
        if seed % 2:
            return client.post("/api/score", json={"text": "The Time"}).json()["total_bits"]
        return client.post("/api/generate", json={"prefix": "The", "length": 30, "seed": seed, "stream": False})

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(tab, range(6)))
    for seed, answer in enumerate(answers):
        if seed % 2:
            assert answer == expected_bits
        else:
            assert answer.json()["text"] == "The" + expected[seed].continuations[0]
    assert len(loads) == 1


def bad_run_folder(root, name="bad"):
    """A run folder whose files hold what strict JSON cannot: every one must still list."""
    import datetime

    shutil.copytree(root, root.parent / name)
    folder = root.parent / name
    (folder / "metrics.jsonl").write_text('{"step": 1, "val_perplexity": Infinity}\n[1, 2, 3]\n"a row"\n'
                                          + "[" * 100_000 + "\n" + '{"step": 2, "val_perplexity": NaN}\n')
    (folder / "summary.json").write_text('{"best_val_perplexity": NaN}')
    (folder / "config.yaml").write_text(f"a: .nan\nb: {datetime.date(2026, 1, 2)}\nc: !!binary aGk=\nd: -.inf\n")
    return folder


def test_one_bad_run_folder_lists_as_nulls_and_every_run_is_still_listed(client):
    bad = bad_run_folder(client.run_folder)
    with TestClient(create_app(find_runs([client.run_folder, bad])), base_url="http://127.0.0.1:8000") as c:
        response = c.get("/api/runs")
        assert response.status_code == 200, response.text
        runs = {r["name"]: r for r in response.json()["runs"]}
        assert set(runs) == {"tiny", "bad"} and runs["tiny"]["config"]["model"]["name"] == "rnn"
        assert runs["bad"]["config"] == {"a": None, "b": "2026-01-02", "c": None, "d": None}
        assert runs["bad"]["best_val_perplexity"] is None and runs["bad"]["steps"] == 2
        detail = c.get("/api/runs/bad")
        assert detail.status_code == 200 and detail.json()["metrics"] == [{"step": 1, "val_perplexity": None},
                                                                          {"step": 2, "val_perplexity": None}]


def test_only_the_tail_of_a_long_metrics_log_and_a_config_of_bounded_size_are_read(client, monkeypatch):
    import charlm.serve.runs

    monkeypatch.setattr(charlm.serve.runs, "METRICS_TAIL_BYTES", 1000)
    rows = "".join(json.dumps({"step": i, "val_perplexity": 100.0 - i / 1000}) + "\n" for i in range(20_000))
    (client.run_folder / "metrics.jsonl").write_text(rows)
    (client.run_folder / "summary.json").unlink()
    detail = client.get("/api/runs/tiny").json()
    steps = [row["step"] for row in detail["metrics"]]
    assert steps[-1] == 19_999 and 0 < len(steps) < 30 and steps == list(range(steps[0], 20_000))
    assert detail["steps"] == 19_999 and detail["best_val_perplexity"] == 100.0 - 19_999 / 1000
    (client.run_folder / "config.yaml").write_text("a: 1\n" + "#" * (2 << 20))  # over a config's 1 MB
    assert client.get("/api/runs/tiny").json()["config"] is None


def poison(folder):
    import torch

    for name in ("best.pt", "last.pt"):
        payload = torch.load(folder / name, weights_only=True)
        key = next(k for k, v in payload["model"].items() if v.is_floating_point())
        payload["model"][key][0] = float("nan")
        torch.save(payload, folder / name)


def test_a_model_with_nan_weights_is_one_line_in_serve_and_in_the_cli(client):
    poison(client.run_folder)
    for response in (client.post("/api/score", json={"text": "The"}),
                     client.post("/api/generate", json={"length": 3, "stream": False})):
        assert response.status_code == 400 and "hold NaN or inf" in response.json()["error"]
    for command in (["evaluate", "--json"], ["score", "The Time", "--json"]):
        line = one_error_line(invoke(*command, "--checkpoint", str(client.run_folder)))
        assert "hold NaN or inf" in line and "NaN," not in line


def test_a_deeply_nested_body_is_a_400(client):
    body = b'{"text": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    response = client.post("/api/score", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json() == {"error": "the request body is nested too deeply"}


def test_reading_run_folders_does_not_hold_the_event_loop(client, monkeypatch):
    import threading

    import charlm.serve.app

    entered, release, waited_out = threading.Event(), threading.Event(), []
    real = charlm.serve.app.describe_run

    def slow(*args, **kwargs):
        entered.set()
        waited_out.append(not release.wait(10))  # True: nothing else could run while this waited
        return real(*args, **kwargs)

    monkeypatch.setattr(charlm.serve.app, "describe_run", slow)
    listing = threading.Thread(target=lambda: client.get("/api/runs"))
    listing.start()
    assert entered.wait(30)
    assert client.get("/static/style.css").status_code == 200  # served while the listing is busy
    release.set()
    listing.join(30)
    assert waited_out == [False]


def test_an_abandoned_non_streaming_generate_stops(client, monkeypatch):
    """The client sends its request and leaves: the generation ends instead of running to its length."""
    import threading

    import anyio

    import charlm.inference

    endings, finished = [], threading.Event()
    real = charlm.inference.generate_from_checkpoint

    def recorded(*args, **kwargs):
        on_token = kwargs["on_token"]

        def slow(step, tokens):  # a long generation, however fast this machine decodes
            time.sleep(0.002)
            on_token(step, tokens)

        try:
            run = real(*args, **{**kwargs, "on_token": slow})
            endings.append("completed")
            return run
        except BaseException as exc:
            endings.append(type(exc).__name__)
            raise
        finally:
            finished.set()

    monkeypatch.setattr(charlm.inference, "generate_from_checkpoint", recorded)
    body = json.dumps({"length": 10_000, "stream": False}).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():  # the request, then the client is gone
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/generate", "raw_path": b"/api/generate", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    anyio.run(create_app(find_runs([client.run_folder])), scope, receive, send)
    assert finished.wait(60)
    assert endings == ["_Stopped"]
    assert sent[0]["status"] == 499


def test_loading_a_checkpoint_does_not_hold_the_event_loop(client, monkeypatch):
    import threading

    import charlm.checkpoint

    entered, release, waited_out = threading.Event(), threading.Event(), []
    real = charlm.checkpoint.load_model

    def slow(file):
        entered.set()
        waited_out.append(not release.wait(10))  # True: nothing else could run while this waited
        return real(file)

    monkeypatch.setattr(charlm.checkpoint, "load_model", slow)
    scoring = threading.Thread(target=lambda: client.post("/api/score", json={"text": "The"}))
    scoring.start()
    assert entered.wait(30)
    assert client.get("/api/runs").status_code == 200  # answered while the model loads
    release.set()
    scoring.join(30)
    assert waited_out == [False]


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_the_page_never_tells_its_user_to_pass_a_command_line_flag():
    import subprocess
    from pathlib import Path

    import charlm.serve

    script = (Path(charlm.serve.__file__).parent / "static" / "app.js").read_text(encoding="utf-8")
    code = script.split("function pageMessage", 1)
    assert len(code) == 2, "app.js has no pageMessage"
    body = "function pageMessage" + code[1].split("\n}\n", 1)[0] + "\n}\n"
    message = "the prefix has a character not in the vocabulary: 'é' (use --unknown map to replace them with <unk>)"
    shown = subprocess.run(["node", "-e", body + f"console.log(pageMessage({json.dumps(message)}))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert "--" not in shown and shown.startswith("the prefix has a character not in the vocabulary: 'é'")
