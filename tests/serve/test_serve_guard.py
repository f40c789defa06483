"""Tests for charlm.serve.guard: only this machine's pages may use the API (Host, Origin, JSON POSTs)."""

import shutil

import pytest

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from charlm.errors import CharLMError  # noqa: E402
from charlm.serve import check_port, create_app, find_runs  # noqa: E402
from cli_helpers import invoke, one_error_line  # noqa: E402
from test_serve import run_dir  # noqa: E402,F401 -- the module's trained run


@pytest.fixture
def app(run_dir, tmp_path):  # noqa: F811
    copy = tmp_path / "tiny"
    shutil.copytree(run_dir, copy)
    return create_app(find_runs([copy]), host="127.0.0.1")


@pytest.mark.parametrize("host", ["attacker.example:8765", "attacker.example", "127.0.0.1.nip.io:8765", "",
                                  "localhost.attacker.example"])
def test_a_foreign_host_name_gets_nothing(app, host):
    with TestClient(app, base_url="http://127.0.0.1:8765") as client:
        response = client.get("/api/runs", headers={"host": host})
        assert response.status_code == 400 and "tiny" not in response.text and "config" not in response.text
        assert client.post("/api/generate", json={"length": 3}, headers={"host": host}).status_code == 400


@pytest.mark.parametrize("host", ["127.0.0.1:8765", "localhost:8765", "LOCALHOST", "[::1]:8765"])
def test_loopback_host_names_are_answered(app, host):
    with TestClient(app, base_url="http://127.0.0.1:8765") as client:
        response = client.get("/api/runs", headers={"host": host})
        assert response.status_code == 200 and response.json()["runs"][0]["name"] == "tiny"


def test_the_address_it_was_told_to_listen_on_is_answered_too(run_dir, tmp_path):  # noqa: F811
    shutil.copytree(run_dir, tmp_path / "tiny")
    with TestClient(create_app(find_runs([tmp_path / "tiny"]), host="192.168.7.7"),
                    base_url="http://192.168.7.7:8000") as client:
        assert client.get("/api/runs").status_code == 200
        assert client.get("/api/runs", headers={"host": "evil.example:8000"}).status_code == 400


@pytest.mark.parametrize("path, body", [("/api/generate", b'{"length": 3, "stream": false}'),
                                        ("/api/score", b'{"text": "The"}')])
@pytest.mark.parametrize("kind", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x",
                                  None])
def test_a_post_that_is_not_application_json_runs_nothing(app, path, body, kind, monkeypatch):
    import charlm.inference

    ran = []
    monkeypatch.setattr(charlm.inference, "generate_from_checkpoint", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(charlm.inference, "score_checkpoint", lambda *a, **k: ran.append(a))
    with TestClient(app, base_url="http://127.0.0.1:8765") as client:
        headers = {"content-type": kind} if kind else {}
        response = client.post(path, content=body, headers=headers)
        assert response.status_code == 415 and "application/json" in response.json()["error"]
        assert ran == []


@pytest.mark.parametrize("origin", ["http://attacker.example", "http://localhost:3000", "null",
                                    "https://127.0.0.1:8765.attacker.example", "file://"])
def test_a_foreign_origin_is_refused_and_the_page_own_origin_is_not(app, origin):
    with TestClient(app, base_url="http://127.0.0.1:8765") as client:
        refused = client.post("/api/generate", json={"length": 3, "stream": False}, headers={"origin": origin})
        assert refused.status_code == 403 and "another site" in refused.json()["error"]
        assert client.get("/api/runs", headers={"origin": origin}).status_code == 403
        same = client.post("/api/generate", json={"length": 3, "stream": False},
                           headers={"origin": "http://127.0.0.1:8765"})
        assert same.status_code == 200 and len(same.json()["continuation"]) == 3


def test_a_host_of_100k_characters_is_one_line(run_dir):  # noqa: F811
    with pytest.raises(CharLMError, match="100,000 characters; a host name or address has at most 253"):
        check_port("a" * 100_000, 8000)
    with pytest.raises(CharLMError, match="is not an address of this machine"):
        check_port("a" * 64 + ".example", 8000)  # a label over 63 characters: idna's UnicodeError
    assert "100,000 characters" in one_error_line(invoke("serve", str(run_dir), "--host", "a" * 100_000))
