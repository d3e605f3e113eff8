"""Tests for covnb.fetch against a local HTTP server on 127.0.0.1 (no other traffic)."""

from __future__ import annotations

import io
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from covnb.cli import main
from covnb.fetch import DEFAULT_POCUS_URL, FetchError, fetch_pocus, read_fetch_record, verify_pocus

TOP = "covid19_ultrasound-master"
VIDEO_BYTES = b"\x00\x00\x00\x18ftypmp42 not really a video"
METADATA = b"Current location,Filename,Label\npocus_videos/convex,Cov_x,COVID-19\n"


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


GOOD_ZIP = _zip({
    f"{TOP}/README.md": b"repository readme",
    f"{TOP}/pocovid_net/model.py": b"print('not data')",
    f"{TOP}/data/dataset_metadata.csv": METADATA,
    f"{TOP}/data/pocus_videos/convex/Cov_x.mp4": VIDEO_BYTES,
    f"{TOP}/data/pocus_images/convex/Reg_y.png": b"\x89PNG fake",
})
SECOND_ZIP = _zip({
    f"{TOP}/data/dataset_metadata.csv": METADATA + b"pocus_videos/convex,Cov_z,COVID-19\n",
    f"{TOP}/data/pocus_videos/convex/Cov_z.mp4": VIDEO_BYTES,
})
NO_DATA_ZIP = _zip({f"{TOP}/README.md": b"readme", f"{TOP}/code/x.py": b"pass"})
EVIL_ZIP = _zip({
    f"{TOP}/data/dataset_metadata.csv": METADATA,
    f"{TOP}/data/pocus_videos/convex/Cov_x.mp4": VIDEO_BYTES,
    "../evil": b"escaped",
})
ABSOLUTE_ZIP = _zip({f"{TOP}/data/dataset_metadata.csv": METADATA, "/tmp/covnb_evil_abs": b"escaped"})


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server API)
        self.server.requests.append(self.path)
        routes = {
            "/good.zip": GOOD_ZIP,
            "/second.zip": SECOND_ZIP,
            "/nodata.zip": NO_DATA_ZIP,
            "/evil.zip": EVIL_ZIP,
            "/absolute.zip": ABSOLUTE_ZIP,
            "/html.zip": b"<html><body>Rate limit exceeded</body></html>",
        }
        if self.path == "/truncated.zip":
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(GOOD_ZIP) + 5000))
            self.end_headers()
            self.wfile.write(GOOD_ZIP[: len(GOOD_ZIP) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path == "/moving.zip":  # an archive whose bytes change between downloads
            routes["/moving.zip"] = self.server.moving
        if self.path not in routes:
            self.send_error(404, "Not Found")
            return
        body = routes[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.requests = []
    httpd.moving = GOOD_ZIP
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    host, port = httpd.server_address
    httpd.base = f"http://{host}:{port}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_default_url_is_the_public_repository_archive():
    assert DEFAULT_POCUS_URL.startswith("https://github.com/jannisborn/covid19_ultrasound/archive/")
    assert DEFAULT_POCUS_URL.endswith(".zip") and "master" not in DEFAULT_POCUS_URL  # a pinned commit
    assert issubclass(FetchError, RuntimeError)


def test_download_extracts_data_folder_and_is_cached(server, tmp_path, capsys):
    before = len(server.requests)
    root = fetch_pocus(data_home=tmp_path, url=server.base + "/good.zip", progress=True)
    assert root == tmp_path / "pocus"
    assert (root / "dataset_metadata.csv").read_bytes() == METADATA
    assert (root / "pocus_videos" / "convex" / "Cov_x.mp4").read_bytes() == VIDEO_BYTES
    assert (root / "pocus_images" / "convex" / "Reg_y.png").exists()
    assert not (root / "README.md").exists() and not (root / "pocovid_net").exists()  # only data/
    assert _leftovers(tmp_path) == ["pocus", "pocus.fetch.json"]  # no temporary file or folder
    assert len(server.requests) == before + 1
    err = capsys.readouterr().err
    assert "Downloading" in err and "100%" in err

    # second call: no network at all (even with a URL that would fail)
    again = fetch_pocus(data_home=tmp_path, url=server.base + "/missing.zip")
    assert again == root and len(server.requests) == before + 1


def test_force_replaces_the_copy(server, tmp_path):
    fetch_pocus(data_home=tmp_path, url=server.base + "/good.zip", progress=False)
    root = fetch_pocus(data_home=tmp_path, url=server.base + "/second.zip", force=True, progress=False)
    assert (root / "pocus_videos" / "convex" / "Cov_z.mp4").exists()
    assert not (root / "pocus_videos" / "convex" / "Cov_x.mp4").exists()
    assert _leftovers(tmp_path) == ["pocus", "pocus.fetch.json"]


def test_force_keeps_the_old_copy_when_the_download_fails(server, tmp_path):
    fetch_pocus(data_home=tmp_path, url=server.base + "/good.zip", progress=False)
    with pytest.raises(FetchError, match="404"):
        fetch_pocus(data_home=tmp_path, url=server.base + "/missing.zip", force=True, progress=False)
    assert (tmp_path / "pocus" / "pocus_videos" / "convex" / "Cov_x.mp4").exists()
    assert _leftovers(tmp_path) == ["pocus", "pocus.fetch.json"]


def test_default_data_home_is_the_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("COVNB_CACHE_DIR", str(tmp_path / "cache"))
    root = fetch_pocus(url=server.base + "/good.zip", progress=False)
    assert root == tmp_path / "cache" / "data" / "pocus"


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/missing.zip", r"HTTP 404"),
        ("/truncated.zip", r"(broke off|truncated)"),
        ("/html.zip", r"not a zip archive"),
        ("/nodata.zip", r"no data/ folder"),
        ("/evil.zip", r"unsafe member path '\.\./evil'"),
        ("/absolute.zip", r"unsafe member path '/tmp/covnb_evil_abs'"),
    ],
)
def test_broken_downloads_raise_and_leave_nothing(server, tmp_path, path, expected):
    url = server.base + path
    data_home = tmp_path / "home"
    with pytest.raises(FetchError, match=expected) as info:
        fetch_pocus(data_home=data_home, url=url, progress=False)
    message = str(info.value)
    assert url in message  # names the URL
    assert "yourself" in message and "data/ folder" in message  # says what to do
    assert _leftovers(data_home) == []
    assert not (tmp_path / "evil").exists() and not Path("/tmp/covnb_evil_abs").exists()


def test_connection_refused_raises_fetch_error(tmp_path):
    with socket.socket() as sock:  # a port on 127.0.0.1 that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/master.zip"
    with pytest.raises(FetchError, match="Could not connect") as info:
        fetch_pocus(data_home=tmp_path, url=url, progress=False, timeout=5)
    assert url in str(info.value)
    assert _leftovers(tmp_path) == []


def test_incomplete_existing_folder_is_not_overwritten(server, tmp_path):
    (tmp_path / "pocus").mkdir()
    (tmp_path / "pocus" / "notes.txt").write_text("mine")
    before = len(server.requests)
    with pytest.raises(FetchError, match="force=True"):
        fetch_pocus(data_home=tmp_path, url=server.base + "/good.zip", progress=False)
    assert len(server.requests) == before
    assert (tmp_path / "pocus" / "notes.txt").read_text() == "mine"


def test_first_download_is_recorded_and_pins_later_downloads(server, tmp_path):
    import hashlib

    server.moving = GOOD_ZIP
    root = fetch_pocus(data_home=tmp_path, url=server.base + "/moving.zip", progress=False)
    record = read_fetch_record(tmp_path)
    assert record["archive_sha256"] == hashlib.sha256(GOOD_ZIP).hexdigest()
    assert record["files"]["pocus_videos/convex/Cov_x.mp4"] == hashlib.sha256(VIDEO_BYTES).hexdigest()
    assert sorted(record["files"]) == ["dataset_metadata.csv", "pocus_images/convex/Reg_y.png",
                                       "pocus_videos/convex/Cov_x.mp4"]
    assert "first download" in record["pinned"]

    server.moving = SECOND_ZIP  # upstream changed (or was tampered with): refused, the old copy stays
    with pytest.raises(FetchError, match=r"expected .*pocus\.fetch\.json"):
        fetch_pocus(data_home=tmp_path, url=server.base + "/moving.zip", force=True, progress=False)
    assert (root / "pocus_videos" / "convex" / "Cov_x.mp4").read_bytes() == VIDEO_BYTES
    assert _leftovers(tmp_path) == ["pocus", "pocus.fetch.json"]

    # the same bytes again pass the pin
    server.moving = GOOD_ZIP
    fetch_pocus(data_home=tmp_path, url=server.base + "/moving.zip", force=True, progress=False)


def test_an_explicit_sha256_is_checked_and_recorded(server, tmp_path):
    with pytest.raises(FetchError, match="SHA-256"):
        fetch_pocus(data_home=tmp_path, url=server.base + "/good.zip", sha256="ab" * 32, progress=False)
    assert _leftovers(tmp_path) == []
    import hashlib

    right = hashlib.sha256(GOOD_ZIP).hexdigest()
    fetch_pocus(data_home=tmp_path, url=server.base + "/good.zip", sha256=right, progress=False)
    assert read_fetch_record(tmp_path)["pinned"] == "constant or argument"


def test_verify_finds_changed_missing_and_added_files(server, tmp_path, capsys):
    root = fetch_pocus(data_home=tmp_path, url=server.base + "/good.zip", progress=False)
    clean = verify_pocus(tmp_path)
    assert (clean["checked"], clean["changed"], clean["missing"], clean["added"]) == (3, [], [], [])
    assert main(["data", "fetch", "--verify", "--data-home", str(tmp_path)]) == 0
    (root / "pocus_videos" / "convex" / "Cov_x.mp4").write_bytes(b"edited")
    (root / "pocus_images" / "convex" / "Reg_y.png").unlink()
    (root / "extra.txt").write_text("new")
    result = verify_pocus(tmp_path)
    assert result["changed"] == ["pocus_videos/convex/Cov_x.mp4"]
    assert result["missing"] == ["pocus_images/convex/Reg_y.png"]
    assert result["added"] == ["extra.txt"]
    capsys.readouterr()
    assert main(["data", "fetch", "--verify", "--data-home", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "1 changed, 1 missing, 1 added" in out and "changed: pocus_videos/convex/Cov_x.mp4" in out


def test_cli_fetch_prints_the_folder_and_reports_errors_without_traceback(server, tmp_path, capsys):
    assert main(["data", "fetch", "--data-home", str(tmp_path), "--url", server.base + "/good.zip"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "pocus")
    assert main(["data", "fetch", "--data-home", str(tmp_path / "other"), "--url", server.base + "/missing.zip"]) == 2
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "Traceback" not in err
    assert main(["data", "fetch", "--verify", "--data-home", str(tmp_path / "none")]) == 2
    assert "No download record" in capsys.readouterr().err


def test_a_corrupt_record_is_named(server, tmp_path):
    (tmp_path / "pocus.fetch.json").write_text("{not json")
    with pytest.raises(FetchError, match=r"pocus\.fetch\.json cannot be read"):
        fetch_pocus(data_home=tmp_path, url=server.base + "/good.zip", progress=False)
