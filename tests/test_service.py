"""The service against a real uvicorn server on 127.0.0.1: every endpoint, every error code, key scopes,
and kill -9 during a burst of map additions followed by a restart."""

import io
import json
import os
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from service_server import DEMO, MAP_FRAMES, Server, build_index, map_name, query  # noqa: E402

from vprkit.client import Client, ServiceError  # noqa: E402
from vprkit.features import extract, h5io  # noqa: E402
from vprkit.index import faiss_index  # noqa: E402
from vprkit.service.auth import add_key  # noqa: E402

MAX_BODY, MAX_PIXELS = 2_000_000, 1_000_000
RERANK = {"resize_max": 112, "whiten_images": 12, "dim": 32}
DEMO_QUERY = DEMO / "query"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    idx = build_index(root)
    keys = root / "keys.json"
    k = {"read": add_key(keys, "reader", ["read"]), "write": add_key(keys, "writer", ["read", "write"]),
         "slow": add_key(keys, "slow", ["read"])}
    data = json.loads(keys.read_text())
    for e in data["keys"]:
        if e["name"] == "slow":
            e.update(rate_per_s=0.001, burst=2)
    keys.write_text(json.dumps(data))
    settings = {"max_body_bytes": MAX_BODY, "max_pixels": MAX_PIXELS, "body_timeout_s": 2,
                "rerank": RERANK}
    server = Server(idx, keys, settings)
    yield server, k, idx, root
    server.kill()


def _h(key):
    return {"Authorization": f"Bearer {key}"}


def offline_top(idx: Path, image: Path, k: int, root: Path) -> tuple[list[str], np.ndarray]:
    """Reference: the offline extractor's descriptor of `image`, brute-force cosine against the map's features."""
    mi = faiss_index.load(idx)
    out = root / f"ref-{image.stem}.h5"
    extract.main(mi.manifest["conf"], image.parent, out, names=[image.name])
    q = h5io.read_global(out, [image.name])[0]
    names = mi.live_names()
    sims = h5io.read_global(idx / "map_features.h5", names) @ q
    order = np.argsort(-sims)[:k]
    return [names[i] for i in order], sims[order]


def test_health_and_ready_need_no_key_docs_are_hidden_with_keys(setup):
    server, *_ = setup
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["map_size"] == len(MAP_FRAMES) and ready["auth"] is True
    assert httpx.get(server.url + "/openapi.json").status_code == 404  # setting public_docs (see test_service_api)
    assert httpx.get(server.url + "/docs").status_code == 404


def test_localize_matches_the_offline_pipeline_multipart_and_raw(setup):
    server, k, idx, root = setup
    names, sims = offline_top(idx, query(100), 3, root)
    r = httpx.post(server.url + "/v1/localize?top_k=3", files={"image": query(100).read_bytes()}, headers=_h(k["read"]))
    assert r.status_code == 200
    body = r.json()
    assert [m["name"] for m in body["matches"]] == names and names[0] == map_name(100)
    assert [m["score"] for m in body["matches"]] == pytest.approx(sims.tolist(), abs=1e-4)
    assert body["matches"][0]["position"] == [100.0, 0.0]
    assert body["estimate"]["name"] == map_name(100) and 0 < body["estimate"]["confidence"] <= 1
    raw = httpx.post(server.url + "/v1/localize", params={"top_k": 3}, content=query(100).read_bytes(),
                     headers={**_h(k["read"]), "Content-Type": "image/jpeg"}).json()
    assert [m["name"] for m in raw["matches"]] == names


def test_a_position_prior_reorders_towards_it(setup):
    server, k, *_ = setup
    c = Client(server.url, k["read"])
    plain = c.localize(query(100), top_k=3)
    near = c.localize(query(100), top_k=3, prior=(30.0, 0.0, 5.0))  # far from the true place (100)
    assert plain["matches"][0]["name"] == map_name(100)
    assert near["matches"][0]["name"] == map_name(30) and near["estimate"]["position"][0] == pytest.approx(30, abs=10)


def test_keys_scopes_and_rate_limit(setup):
    server, k, *_ = setup
    img = {"image": query(40).read_bytes()}
    assert httpx.post(server.url + "/v1/localize", files=img).status_code == 401
    assert httpx.post(server.url + "/v1/localize", files=img, headers=_h("not-a-key")).status_code == 401
    assert httpx.get(server.url + "/metrics").status_code == 401
    r = httpx.post(server.url + "/v1/map/images", files=img, data={"name": "x.jpg"}, headers=_h(k["read"]))
    assert r.status_code == 403 and "write" in r.json()["detail"]
    assert httpx.delete(server.url + f"/v1/map/images/{map_name(0)}", headers=_h(k["read"])).status_code == 403
    codes = [httpx.get(server.url + "/v1/map", headers=_h(k["slow"])).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    r = httpx.get(server.url + "/v1/map", headers=_h(k["slow"]))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


def _png(w, h) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, "PNG")
    return buf.getvalue()


def test_each_refusal_has_its_code(setup):
    server, k, *_ = setup
    url, h = server.url + "/v1/localize", _h(k["read"])
    assert httpx.post(url, content=b"hello", headers={**h, "Content-Type": "text/plain"}).status_code == 415
    assert httpx.post(url, content=b"hello", headers=h).status_code == 415  # no content type
    bad = httpx.post(url, content=b"not an image", headers={**h, "Content-Type": "image/jpeg"})
    assert bad.status_code == 422 and "cannot decode" in bad.json()["detail"]
    assert httpx.post(url, files={"photo": b"x"}, headers=h).status_code == 422  # no 'image' field
    assert httpx.post(url + "?top_k=0", files={"image": query(0).read_bytes()}, headers=h).status_code == 422
    assert httpx.post(url + "?rerank=magic", files={"image": query(0).read_bytes()}, headers=h).status_code == 422
    assert httpx.post(url + "?prior=1,2", files={"image": query(0).read_bytes()}, headers=h).status_code == 422
    big = httpx.post(url, content=os.urandom(MAX_BODY + 1), headers={**h, "Content-Type": "image/jpeg"})
    assert big.status_code == 413 and "bytes" in big.json()["detail"]
    pixels = httpx.post(url, content=_png(1100, 1000), headers={**h, "Content-Type": "image/png"})
    assert pixels.status_code == 413 and "pixels" in pixels.json()["detail"]
    assert httpx.post(url, content=_png(900, 1000), headers={**h, "Content-Type": "image/png"}).status_code == 200


def test_a_chunked_body_over_the_limit_is_cut_off(setup):
    server, k, *_ = setup

    def chunks():
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"\0" * 65536

    r = httpx.post(server.url + "/v1/localize", content=chunks(),
                   headers={**_h(k["read"]), "Content-Type": "image/png"})
    assert r.status_code == 413


def test_a_stalled_upload_times_out_with_408(setup):
    server, k, *_ = setup
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(f"POST /v1/localize HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {k['read']}\r\n"
                  "Content-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n0123456789".encode())
        reply = b""
        while b"}" not in reply and (chunk := s.recv(4096)):  # headers and JSON body may come separately
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 408") and "stalled" in reply


def test_map_add_localize_thumbnail_remove(setup):
    server, k, *_ = setup
    w = Client(server.url, k["write"])
    r = Client(server.url, k["read"])
    added = w.add("new/q55.jpg", query(55), position=(55.0, 1.0))
    assert added["map_size"] == len(MAP_FRAMES) + 1
    top = r.localize(query(55), top_k=2)["matches"][0]
    assert top["name"] == "new/q55.jpg" and top["score"] == pytest.approx(1.0, abs=1e-4)
    assert top["position"] == [55.0, 1.0]
    assert {"name": "new/q55.jpg", "position": [55.0, 1.0]} in r.map()["points"]
    thumb = httpx.get(server.url + "/v1/map/images/new/q55.jpg/thumbnail", headers=_h(k["read"]))
    assert thumb.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(thumb.content)).size == (160, 120)
    with pytest.raises(ServiceError) as e:
        w.add("../escape.jpg", query(55))
    assert e.value.status == 422
    assert httpx.get(server.url + "/v1/map/images/..%2F..%2Fetc%2Fpasswd/thumbnail",
                     headers=_h(k["read"])).status_code in (404, 422)
    assert w.remove("new/q55.jpg")["map_size"] == len(MAP_FRAMES)
    assert r.localize(query(55), top_k=1)["matches"][0]["name"] != "new/q55.jpg"
    with pytest.raises(ServiceError) as e:
        w.remove("new/q55.jpg")
    assert e.value.status == 404


def test_streams_accumulate_frames_and_end(setup):
    server, k, *_ = setup
    c = Client(server.url, k["read"])
    outs = [c.frame("robot-1", query(i)) for i in (98, 99, 100, 101)]
    assert [o["frames"] for o in outs] == [1, 2, 3, 4]
    assert outs[-1]["estimate"]["name"] == map_name(100)
    assert c.frame("robot-2", query(40))["frames"] == 1  # streams are independent
    assert httpx.delete(server.url + "/v1/streams/robot-1", headers=_h(k["read"])).status_code == 200
    assert httpx.delete(server.url + "/v1/streams/robot-1", headers=_h(k["read"])).status_code == 404
    bad = httpx.post(server.url + "/v1/streams/" + "x" * 65 + "/frames", files={"image": query(1).read_bytes()},
                     headers=_h(k["read"]))
    assert bad.status_code == 422


def test_concurrent_requests_are_batched_and_counted_in_metrics(setup):
    server, k, *_ = setup
    results = []

    def one():
        results.append(Client(server.url, k["read"]).localize(query(10), top_k=1)["matches"][0]["name"])

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [map_name(10)] * 8
    text = httpx.get(server.url + "/metrics", headers=_h(k["read"])).text
    assert 'vprkit_requests_total{route="/v1/localize",status="200"}' in text
    assert 'vprkit_requests_total{route="/v1/localize",status="415"}' in text
    assert "vprkit_request_seconds_bucket" in text and "vprkit_batch_size_count" in text
    images = [line for line in text.splitlines() if line.startswith("vprkit_map_images ")]
    assert float(images[0].split()[1]) == len(MAP_FRAMES)
    batches = float(next(x for x in text.splitlines() if x.startswith("vprkit_batch_size_count")).split()[1])
    forwarded = float(next(x for x in text.splitlines() if x.startswith("vprkit_batch_size_sum")).split()[1])
    assert forwarded >= 8 and batches <= forwarded  # every image went through a (possibly shared) forward pass


@pytest.mark.slow
def test_chamfer_rerank_gives_the_offline_rerank_step_scores(setup):
    """Reference: `vprkit query` then `vprkit rerank --method chamfer` with the same settings on the same query."""
    import shutil

    from vprkit import api
    from vprkit.evaluation.outputs import read_predictions
    from vprkit.rerank import base
    from vprkit.rerank.chamfer import ChamferReranker

    server, k, idx, root = setup
    qdir = root / "one-query"
    qdir.mkdir()
    shutil.copy(query(100), qdir / "q.jpg")
    api.localize(idx, qdir, top_k=4, out_dir=root / "res")
    conf = ChamferReranker.CONFIG.resolve(**RERANK)
    base.main(conf, root / "res", root / "res-chamfer", num_rerank=4)
    _, m_names, ids, scores = read_predictions(root / "res-chamfer" / "predictions.txt",
                                               faiss_index.load(idx).names)
    offline = {m_names[i]: s for i, s in zip(ids[0], scores[0])}
    online = Client(server.url, k["read"]).localize(query(100), top_k=4, rerank="chamfer")
    assert online["reranked"]
    assert {m["name"]: m["score"] for m in online["matches"]} == pytest.approx(offline, abs=2e-3)


@pytest.mark.slow
def test_kill_9_during_a_burst_of_additions_then_restart(tmp_path):
    """Four clients add images; the server is killed with SIGKILL mid-burst (compacting every 3 additions, so
    some kills land in a compaction). After a restart every acknowledged image is its own best match."""
    idx = build_index(tmp_path)
    server = Server(idx, settings={"compact_every": 3})
    token = server.token
    acked, lock, stop = [], threading.Lock(), threading.Event()
    frames = list(range(1, 111, 2))

    def client(offset):
        c = Client(server.url, token, timeout=30)
        for i in frames[offset::4]:
            if stop.is_set():
                return
            try:
                c.add(f"burst/{i:03d}.jpg", query(i), position=(float(i), 5.0))
            except (ServiceError, httpx.HTTPError):
                return
            with lock:
                acked.append(i)
                if len(acked) >= 10:
                    stop.set()
                    server.proc.kill()

    threads = [threading.Thread(target=client, args=(o,)) for o in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    server.kill()
    assert len(acked) >= 10
    faiss_index.load(idx)  # opens offline
    server = Server(idx)
    try:
        c = Client(server.url)
        live = {p["name"] for p in c.map()["points"]}
        assert {f"burst/{i:03d}.jpg" for i in acked} <= live
        for i in acked:
            top = c.localize(query(i), top_k=1)["matches"][0]
            assert top["name"] == f"burst/{i:03d}.jpg" and top["position"] == [float(i), 5.0]
        assert server.stop() == 0
    finally:
        server.kill()
    assert faiss_index.load(idx).index.ntotal == len(faiss_index.load(idx).live_names())  # compacted on exit


def test_replay_through_a_throttling_server_gets_every_frame_in_and_a_watcher_gets_each_pushed(tmp_path):
    """A server that allows 4 requests/s (burst 2) and answers within 2 s: `replay` as fast as it can would be
    refused (429) most of the time; the client waits each `Retry-After` and every frame gets in, in order. A
    watcher of the stream's events, open for longer than the 2 s time limit, receives the history and then
    each frame's answer exactly as the robot got it."""
    from vprkit.client import replay, retry_after

    idx = build_index(tmp_path)
    server = Server(idx, settings={"rate_per_s": 4, "rate_burst": 2, "timeout_s": 2})
    events, ready = [], threading.Event()

    def watch():
        with httpx.stream("GET", server.url + "/v1/streams/robot-9/events", timeout=60) as r:
            if r.status_code == 429:  # the bucket is shared with the replay (one client address)
                time.sleep(retry_after(r.headers["Retry-After"]))
                return watch()
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            for block in _sse_blocks(r.iter_lines()):
                events.append(block)
                ready.set()
                if sum(e[0] == "frame" for e in events) == 12:
                    return

    try:
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        assert ready.wait(60)  # the history came first (empty: the stream does not exist yet)
        c = Client(server.url)
        answers = [a for _, a in replay(c, DEMO_QUERY, "robot-9", fps=0, start=30, limit=12)]
        watcher.join(60)
        assert [a["frames"] for a in answers] == list(range(1, 13))
        assert c.retried >= 5  # 12 requests at once against 4/s, burst 2
        metrics = httpx.get(server.url + "/metrics")
        while metrics.status_code == 429:  # this reader shares the bucket the replay drained
            time.sleep(retry_after(metrics.headers["Retry-After"]))
            metrics = httpx.get(server.url + "/metrics")
        refused = re.search(r'vprkit_requests_total\{route="/v1/streams/\{stream_id\}/frames",status="429"\} (\S+)',
                            metrics.text)
        assert float(refused.group(1)) == c.retried  # the server refused exactly the requests the client retried
        assert events[0] == ("history", {"stream": "robot-9", "frames": 0, "history": []})
        assert [data for kind, data in events[1:]] == answers  # pushed as answered, past the 2 s time limit
        assert answers[-1]["time"] - answers[0]["time"] > 2  # 12 at 4/s after a burst of 2 take >= 2.5 s
        events.clear()
        ready.clear()
        watcher = threading.Thread(target=watch, daemon=True)  # a watcher still open when the server stops
        watcher.start()
        assert ready.wait(60)
        assert server.stop() == 0  # a clean stop ends the event stream instead of waiting for it
        watcher.join(60)
        assert not watcher.is_alive() and "graceful shutdown exceeded" not in server.log.read_text()
    finally:
        server.kill()


def _sse_blocks(lines):
    """(event, data as JSON) per Server-Sent Events block; comments skipped."""
    kind, data = None, []
    for line in lines:
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif not line and kind:
            yield kind, json.loads("\n".join(data))
            kind, data = None, []
