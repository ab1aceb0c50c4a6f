"""Weights directory, verified download from a loopback server, and catalog names resolving to files."""

import dataclasses
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch

from encoders.catalog import CATALOG
from encoders.registry import create_encoder, list_encoders
from encoders.resnet import build_resnet
from encoders.weights import download, fetch, is_available, resolve_weights_dir, weight_path
from harness.common.errors import HarnessError


class _Server:
    """Serves ``files`` (path -> bytes) on 127.0.0.1 only; ``lie`` paths announce more bytes than they send."""

    def __init__(self, files: dict[str, bytes], lie: tuple[str, ...] = ()):
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) + (100 if self.path in outer.lie else 0)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.files, self.lie = files, lie
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 5
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(tmp_path):
    torch.manual_seed(0)
    state = {f"model.{k}": v for k, v in build_resnet("resnet18", seed=7).state_dict().items()}
    torch.save(state, tmp_path / "virb.pt")
    files = {"/virb.pt": (tmp_path / "virb.pt").read_bytes(), "/blob": b"harness" * 5000}
    srv = _Server(files, lie=("/short",))
    srv.files["/short"] = b"x" * 1000
    yield srv
    srv.close()


def test_download_verifies_sha256(server, tmp_path):
    body = server.files["/blob"]
    dest = tmp_path / "w" / "blob.bin"
    download(f"{server.url}/blob", dest, sha256=hashlib.sha256(body).hexdigest())
    assert dest.read_bytes() == body
    dest.unlink()
    download(f"{server.url}/blob", dest, sha256=hashlib.sha256(body).hexdigest()[:8])  # torchvision-style prefix
    assert dest.read_bytes() == body


def test_sha256_mismatch_deletes_partial_file_and_fails(server, tmp_path):
    folder = tmp_path / "w"
    with pytest.raises(HarnessError, match="SHA-256 mismatch.*deleted") as exc:
        download(f"{server.url}/blob", folder / "blob.bin", sha256="0" * 64)
    assert exc.value.exit_code == 1
    assert list(folder.iterdir()) == []  # neither the target nor a temporary file is left


def test_truncated_download_and_http_errors_leave_nothing(server, tmp_path):
    folder = tmp_path / "w"
    with pytest.raises(HarnessError, match="stopped after 1000 of 1100 bytes|failed"):
        download(f"{server.url}/short", folder / "short.bin")
    assert not any(folder.iterdir())
    with pytest.raises(HarnessError, match="could not download"):
        download(f"{server.url}/absent", folder / "absent.bin")
    with pytest.raises(HarnessError, match="only http"):
        download("file:///etc/passwd", folder / "x")
    assert not any(folder.iterdir())


def test_missing_catalog_weights_fail_with_one_line_and_download_only_on_request(server, tmp_path, monkeypatch):
    wdir = tmp_path / "weights"
    entry = dataclasses.replace(CATALOG["swav_in100"], url=f"{server.url}/virb.pt")
    monkeypatch.setitem(CATALOG, "swav_in100", entry)
    assert not is_available(entry, wdir)
    with pytest.raises(HarnessError) as exc:
        create_encoder("swav_in100", weights_dir=wdir)
    msg = str(exc.value)
    assert exc.value.exit_code == 1 and "\n" not in msg
    assert entry.filename in msg and str(wdir) in msg and entry.url in msg
    assert not wdir.exists() or not any(wdir.iterdir())  # nothing was downloaded implicitly
    enc = create_encoder("swav_in100", weights_dir=wdir, download=True)
    assert (wdir / "SWAV_100.pt").is_file() and is_available(entry, wdir)
    assert enc.name == "swav_in100" and enc.info.method == "SwAV" and enc.info.extra["format"] == "virb"
    assert enc.fingerprint() == create_encoder("resnet18", seed=7).fingerprint()  # same weights, same hash
    row = next(r for r in list_encoders(wdir) if r["name"] == "swav_in100")
    assert row["available"] is True and row["path"] == str(wdir / "SWAV_100.pt")
    assert fetch(entry, wdir) == wdir / "SWAV_100.pt"  # present: no second download


def test_weights_dir_follows_env_and_override(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS", str(tmp_path / "env"))
    assert resolve_weights_dir() == tmp_path / "env"
    assert resolve_weights_dir(tmp_path / "cli") == tmp_path / "cli"
    assert weight_path(CATALOG["mocov2_in800"]) == tmp_path / "env" / "moco_v2_800ep_pretrain.pth.tar"
    assert weight_path(CATALOG["random"]) is None and is_available(CATALOG["random"])


def test_fetch_cli_downloads_into_weights_dir(server, tmp_path, monkeypatch, capsys):
    """In-process CLI call, so the patched catalog URL (the loopback server) is used."""
    import sys

    from harness import cli

    entry = dataclasses.replace(CATALOG["mocov2_in50"], url=f"{server.url}/virb.pt")
    monkeypatch.setitem(CATALOG, "mocov2_in50", entry)
    monkeypatch.setattr(sys, "argv", ["harness", "encoders", "fetch", "mocov2_in50", "--weights-dir",
                                      str(tmp_path / "wd"), "--json"])
    try:
        cli.main()
    except SystemExit as exc:
        assert exc.code in (0, None)
    assert Path(tmp_path / "wd" / "MoCov2_50.pt").read_bytes() == server.files["/virb.pt"]
    assert "MoCov2_50.pt" in capsys.readouterr().out
