"""Dataset download against a real local HTTP server: checksum, atomic write, mirrors, errors."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raysem.cli.data import data_app
from raysem.data.fetch import SOURCES, DatasetSource, FetchError, fetch_dataset

FIXTURE = Path(__file__).parents[1] / "fixtures" / "counterfact_rome_small.json"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server(tmp_path):
    """A real HTTP server on 127.0.0.1 (ephemeral port) serving a folder holding the fixture file."""
    root = tmp_path / "served"
    root.mkdir()
    (root / FIXTURE.name).write_bytes(FIXTURE.read_bytes())
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def dead_url():
    """A URL on a port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/dsets/"


def source(sha256: str | None = None, base_urls: tuple[str, ...] = ()) -> DatasetSource:
    data = FIXTURE.read_bytes()
    return DatasetSource(
        name="tiny",
        filename=FIXTURE.name,
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        size=len(data),
        base_urls=base_urls,
    )


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_correct_checksum_writes_the_file(server, tmp_path):
    dest = tmp_path / "dest"
    path = fetch_dataset(source(), dest=dest, base_url=server)
    assert path == dest / FIXTURE.name
    assert path.read_bytes() == FIXTURE.read_bytes()
    assert leftovers(dest) == [FIXTURE.name]


def test_present_file_with_right_hash_is_not_downloaded_again(tmp_path, dead_url):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / FIXTURE.name).write_bytes(FIXTURE.read_bytes())
    assert fetch_dataset(source(), dest=dest, base_url=dead_url) == dest / FIXTURE.name


def test_present_file_with_wrong_hash_is_replaced(server, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / FIXTURE.name).write_text("stale")
    path = fetch_dataset(source(), dest=dest, base_url=server)
    assert path.read_bytes() == FIXTURE.read_bytes()


def test_wrong_checksum_raises_and_leaves_nothing(server, tmp_path):
    dest = tmp_path / "dest"
    wrong = "0" * 64
    with pytest.raises(FetchError) as err:
        fetch_dataset(source(sha256=wrong), dest=dest, base_url=server)
    message = str(err.value)
    assert wrong in message and hashlib.sha256(FIXTURE.read_bytes()).hexdigest() in message
    assert leftovers(dest) == []


def test_server_down_names_the_url(tmp_path, dead_url):
    with pytest.raises(FetchError) as err:
        fetch_dataset(source(), dest=tmp_path / "dest", base_url=dead_url)
    assert f"{dead_url}{FIXTURE.name}" in str(err.value)
    assert leftovers(tmp_path / "dest") == []


def test_missing_file_reports_http_status(server, tmp_path):
    missing = DatasetSource(name="tiny", filename="absent.json", sha256="0" * 64)
    with pytest.raises(FetchError, match=r"absent\.json: HTTP 404"):
        fetch_dataset(missing, dest=tmp_path / "dest", base_url=server)


def test_falls_back_to_the_next_mirror(server, tmp_path, dead_url):
    path = fetch_dataset(source(base_urls=(dead_url, server)), dest=tmp_path / "dest")
    assert path.read_bytes() == FIXTURE.read_bytes()


def test_default_destination_is_the_raysem_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSEM_HOME", str(tmp_path / "home"))
    path = fetch_dataset(source(), base_url=server)
    assert path == tmp_path / "home" / "data" / "tiny" / FIXTURE.name


def test_checksum_table_holds_the_published_digests():
    assert SOURCES["zsre"].filename == "zsre_mend_eval.json"
    assert SOURCES["zsre"].sha256 == "8a371d512f8a6ab175db4ef672181d5c0e52da23298cb51e5a2eeea2f89aa9cd"
    assert SOURCES["counterfact"].filename == "counterfact.json"
    assert SOURCES["counterfact"].sha256 == "d017056125178a13728594e66a801357a8db9ed7973a7425554bb4271de9fc6f"
    assert SOURCES["counterfact"].base_urls[0] == "https://rome.baulab.info/data/dsets/"


def test_unknown_name():
    with pytest.raises(FetchError, match="can fetch: zsre, counterfact"):
        fetch_dataset("wikibio")


def test_cli_fetch_rejects_wrong_bytes(server, tmp_path):
    # First the server has no such file, then one with the wrong content: both fail with exit code 2.
    result = CliRunner().invoke(data_app, ["fetch", "zsre", "--dest", str(tmp_path / "d"), "--base-url", server])
    assert result.exit_code == 2 and "HTTP 404" in result.stderr
    wrong = tmp_path / "served" / "zsre_mend_eval.json"
    wrong.write_text("[]")
    result = CliRunner().invoke(data_app, ["fetch", "zsre", "--dest", str(tmp_path / "d"), "--base-url", server])
    assert result.exit_code == 2 and "sha256 mismatch" in result.stderr and SOURCES["zsre"].sha256 in result.stderr
    assert leftovers(tmp_path / "d") == []
