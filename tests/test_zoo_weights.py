"""Released weights: every file format loads the same tensors strictly; the download (against a real HTTP server on
127.0.0.1, never the network) resumes, checks SHA-256, and fails in one line where the file cannot be had."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyBackbone
from zoo_helpers import ENTRY, registry, released_state, with_weights  # noqa: F401 (registry: the fixture)

from vprkit.aggregators.gem import GeM
from vprkit.cli import main
from vprkit.data.safeio import InputError
from vprkit.models import base, weights, zoo


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A private cache: VPRKIT_CACHE wins over XDG_CACHE_HOME."""
    monkeypatch.setenv("VPRKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _fresh() -> tuple[TinyBackbone, GeM]:
    return TinyBackbone(), GeM(p=3.0)


def _assert_loaded(backbone, aggregator, state) -> None:
    got = {**{f"backbone.{k}": v for k, v in backbone.state_dict().items()},
           **{f"aggregator.{k}": v for k, v in aggregator.state_dict().items()}}
    assert got.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(got[k], v), k


def test_every_released_format_loads_the_same_tensors(tmp_path):
    """A bare .pth; a Lightning .ckpt (`state_dict` + `model.` on every key); a Patch-NetVLAD-style .pth.tar
    (`state_dict` + DataParallel's `module.`, numpy metrics beside it); a .safetensors file."""
    from safetensors.torch import save_file

    state = released_state()
    files = {
        "bare.pth": state,
        "lightning.ckpt": {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3},
        "netvlad.pth.tar": {"epoch": 5, "best_score": np.float64(0.87), "recalls": {1: np.float64(0.8)},
                            "state_dict": {f"module.{k}": v for k, v in state.items()}},
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    save_file(state, tmp_path / "model.safetensors")
    for name in [*files, "model.safetensors"]:
        backbone, aggregator = _fresh()
        weights.load_weights(ENTRY, backbone, aggregator, tmp_path / name)
        _assert_loaded(backbone, aggregator, state)


def test_only_a_prefix_every_key_shares_is_dropped():
    t = torch.zeros(1)
    assert weights.strip_wrappers({"module.model.a": t, "module.model.b": t}) == {"a": t, "b": t}
    mixed = {"model.a": t, "backbone.model.b": t}  # `model.` names a part here: kept
    assert weights.strip_wrappers(mixed) == mixed


def test_convert_maps_the_authors_names(tmp_path, monkeypatch):
    """The entry's `convert` ("module:function" under vprkit.models) runs on the unwrapped file."""
    state = released_state()
    authors = {k.replace("backbone.", "encoder.").replace("aggregator.", "pool."): v for k, v in state.items()}
    torch.save({"state_dict": authors}, tmp_path / "authors.pth.tar")
    monkeypatch.setattr(base, "_test_convert", lambda s: {k.replace("encoder.", "backbone.").replace(
        "pool.", "aggregator."): v for k, v in s.items()}, raising=False)
    backbone, aggregator = _fresh()
    weights.load_weights(dataclasses.replace(ENTRY, convert="base:_test_convert"), backbone, aggregator,
                         tmp_path / "authors.pth.tar")
    _assert_loaded(backbone, aggregator, state)


def test_a_mismatched_file_is_one_line_naming_the_keys(tmp_path):
    state = released_state()
    state["aggregator.extra"] = state.pop("aggregator.p")
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        weights.load_weights(ENTRY, *_fresh(), tmp_path / "bad.pth")
    msg = str(err.value)
    assert "\n" not in msg and "missing: aggregator.p" in msg and "unexpected: aggregator.extra" in msg
    assert str(tmp_path / "bad.pth") in msg


def test_pickled_code_and_broken_files_are_refused(tmp_path):
    torch.save({"state_dict": released_state(), "cfg": socket.AddressFamily}, tmp_path / "unsafe.pth")
    with pytest.raises(InputError, match="weights_only=True"):
        weights.read_released(tmp_path / "unsafe.pth")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(InputError, match="not a readable safetensors file"):
        weights.read_released(tmp_path / "broken.safetensors")
    with pytest.raises(FileNotFoundError):
        weights.read_released(tmp_path / "absent.safetensors")


# ---- download, against a real HTTP server on 127.0.0.1 ----

PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Server:
    """Serves PAYLOAD at /w.pth (honouring `Range: bytes=N-` when `ranges`); the first `drops` responses stop
    after `drop_at` bytes of the body and close the connection. Records each request's Range header."""

    def __init__(self, drops: int = 0, drop_at: int = 100_000, ranges: bool = True):
        self.drops, self.drop_at, self.ranges, self.seen = drops, drop_at, ranges, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.seen.append(self.headers.get("Range"))
                if self.path != "/w.pth":
                    self.send_error(404, "Not Found")
                    return
                start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") and server.ranges else 0
                body = PAYLOAD[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drops:
                    server.drops -= 1
                    self.wfile.write(body[:server.drop_at])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    made = []

    def start(**kw) -> Server:
        made.append(Server(**kw))
        return made[-1]

    yield start
    for s in made:
        s.close()


def test_download_resumes_after_the_connection_drops(serve, cache, capsys):
    srv = serve(drops=1, drop_at=120_000)
    entry = with_weights(url=f"{srv.url}/w.pth")
    path = weights.fetch(entry)
    assert path == cache / "weights" / "tiny_gem.pth" and path.read_bytes() == PAYLOAD
    assert srv.seen == [None, "bytes=120000-"]  # the second request continued after the bytes kept
    assert not path.with_name("tiny_gem.pth.part").exists()
    assert path.with_name("tiny_gem.pth.sha256").read_text().strip() == SHA  # recorded at first download
    err = capsys.readouterr().err
    assert "tiny_gem.pth" in err and "293k/293k" in err  # the progress bar reached the whole file (1024-based)


def test_a_partial_file_of_an_earlier_run_is_continued_or_restarted(serve, cache):
    part = cache / "weights" / "tiny_gem.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:50_000])
    srv = serve()
    assert weights.fetch(with_weights(url=f"{srv.url}/w.pth"), progress=False).read_bytes() == PAYLOAD
    assert srv.seen == ["bytes=50000-"]
    (cache / "weights" / "tiny_gem.pth").unlink()
    part.write_bytes(PAYLOAD[:50_000])
    srv = serve(ranges=False)  # a server that ignores Range sends the whole file: written from the start
    assert weights.fetch(with_weights(url=f"{srv.url}/w.pth"), progress=False).read_bytes() == PAYLOAD


def test_checksum_pinned_or_recorded_is_checked(serve, cache):
    srv = serve()
    wrong = "0" * 64
    with pytest.raises(InputError) as err:
        weights.fetch(with_weights(url=f"{srv.url}/w.pth", sha256=wrong), progress=False)
    assert f"SHA-256 {SHA}, not {wrong} (published by the authors)" in str(err.value)
    left = [p for p in (cache / "weights").iterdir() if not p.name.endswith(".lock")]  # the lock file stays
    assert left == []  # the bad download is gone, nothing renamed into place
    entry = with_weights(url=f"{srv.url}/w.pth", sha256=SHA)
    assert weights.fetch(entry, progress=False).read_bytes() == PAYLOAD
    recorded = with_weights(url=f"{srv.url}/w.pth", filename="rec.pth")
    path = weights.fetch(recorded, progress=False)
    path.write_bytes(PAYLOAD[:-1] + b"x")  # the cached file changed after its first download
    with pytest.raises(InputError, match="recorded at first download.*delete it to download again"):
        weights.fetch(recorded, progress=False)
    assert len(srv.seen) == 3  # one download per file: a cached file is checked, not downloaded again


def _one_line_to_get_it_by_hand(msg: str, url: str) -> None:
    assert "\n" not in msg and f"get tiny_gem.pth from {url}" in msg
    assert "--checkpoint /path/to/tiny_gem.pth" in msg


def test_http_error_is_one_line(serve, cache):
    srv = serve()
    url = f"{srv.url}/gone.pth"
    with pytest.raises(weights.WeightsUnavailable) as err:
        weights.fetch(with_weights(url=url), progress=False)
    assert "HTTP 404" in str(err.value)
    _one_line_to_get_it_by_hand(str(err.value), url)
    assert not (cache / "weights" / "tiny_gem.pth").exists()


def test_no_network_fails_at_once_with_what_to_do(monkeypatch):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/w.pth"
    with pytest.raises(weights.WeightsUnavailable) as err:
        weights.fetch(with_weights(url=url), progress=False)
    assert "no network" in str(err.value) and "refused" in str(err.value)
    _one_line_to_get_it_by_hand(str(err.value), url)

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    url = "http://weights.example/w.pth"
    with pytest.raises(weights.WeightsUnavailable) as err:
        weights.fetch(with_weights(url=url), progress=False)
    assert "Name or service not known" in str(err.value)
    _one_line_to_get_it_by_hand(str(err.value), url)
    with pytest.raises(weights.WeightsUnavailable, match="publish no direct download; get tiny_gem.pth from "
                                                         "built by the test and pass --checkpoint"):
        weights.fetch(ENTRY)


def test_index_without_network_is_one_line_and_exit_2(register, image_folder, tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    register(with_weights(url=f"http://127.0.0.1:{port}/tiny_gem.pth"))
    assert main(["index", str(image_folder), "-o", str(tmp_path / "idx"), "--preset", ENTRY.preset]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vprkit: error: test-tiny-gem: cannot download") and "\n" not in err
    assert "--checkpoint /path/to/tiny_gem.pth" in err


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    assert weights.cached_path(ENTRY) == tmp_path / "cache" / "weights" / "tiny_gem.pth"
    monkeypatch.delenv("VPRKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cached_path(ENTRY) == tmp_path / "xdg" / "vprkit" / "weights" / "tiny_gem.pth"


def test_models_lists_each_preset_and_whether_it_is_cached(register, cache, capsys):
    register()
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines[1:-1]] == sorted(zoo.entries())  # every preset, one row each
    row = next(ln for ln in lines if ln.startswith(ENTRY.preset))
    assert row.split()[1:4] == ["8", "16x20", "none"] and row.split()[-5:] == ["no", "built", "by", "the", "test"]
    (cache / "weights").mkdir(parents=True)
    (cache / "weights" / "tiny_gem.pth").write_bytes(b"x")
    assert main(["models"]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(ENTRY.preset))
    assert " yes " in row


def test_a_second_download_of_the_same_file_is_refused_while_one_runs(serve, cache):
    from vprkit.data.safeio import locked

    srv = serve()
    entry = with_weights(url=f"{srv.url}/w.pth")
    with locked(weights.cached_path(entry)), pytest.raises(InputError, match="another vprkit process is writing"):
        weights.fetch(entry, progress=False)
    assert srv.seen == [] and weights.fetch(entry, progress=False).read_bytes() == PAYLOAD
