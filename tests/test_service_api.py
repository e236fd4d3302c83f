"""The service app in process (FastAPI's TestClient, no sockets): its OpenAPI, the guards against other web
pages (start-up token, Host, Origin), and no 500s for bad input: each a request a user or a hostile page
could send, with the answer it must get."""

import errno
import struct
import zlib
from urllib.parse import quote

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from service_server import DEMO, MAP_FRAMES, build_index, map_name, query  # noqa: E402

from vprkit import cli  # noqa: E402
from vprkit.client import Client  # noqa: E402
from vprkit.index.journal import JournalUnavailable  # noqa: E402
from vprkit.service.app import build, create_app  # noqa: E402
from vprkit.service.auth import KeyStore, add_key  # noqa: E402
from vprkit.service.middleware import allowed_hosts, host_name  # noqa: E402

TOKEN = "start-up-token"
ODD = "place née #20 (copy).jpg"  # `vprkit index` accepts spaces, '#' and unicode: the service must too
WRITE = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def svc_client(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    idx = build_index(root, extra={ODD: 20})
    app, svc = build(idx, settings={"compact_every": 0}, token=TOKEN)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        yield svc, client, root


def _img(i: int) -> dict:
    return {"image": query(i).read_bytes()}


def test_openapi_documents_every_body_response_and_the_security_scheme(svc_client):
    svc, client, _ = svc_client
    spec = client.get("/openapi.json").json()  # public: no keys file (setting public_docs)
    schemes = spec["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {"type": "http", "scheme": "bearer", "description": schemes["HTTPBearer"][
        "description"]} and schemes["APIKeyHeader"]["in"] == "header"
    ops = {(path, m): op for path, item in spec["paths"].items() for m, op in item.items()}
    assert {("/v1/localize", "post"), ("/v1/streams/{stream_id}/frames", "post"), ("/v1/map/images", "post"),
            ("/v1/map/images/{name}", "delete"), ("/v1/map", "get"), ("/metrics", "get")} <= set(ops)
    for (path, method), op in ops.items():
        ok = op["responses"][str(201 if (path, method) == ("/v1/map/images", "post") else 200)]
        assert ok["content"], (path, method)  # every answer has a documented body
        if path.startswith("/v1") or path == "/metrics":
            scope = "write" if path.startswith("/v1/map/images") and method != "get" else "read"
            assert op["security"] == [{"HTTPBearer": [scope]}, {"APIKeyHeader": [scope]}], (path, method)
            assert op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"].endswith("/Problem")
        if method == "post":
            body = op["requestBody"]["content"]
            form = body["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
            fields = spec["components"]["schemas"][form]["properties"]
            assert fields["image"]["anyOf"][0] == {"type": "string", "contentMediaType": "application/octet-stream"}
            assert body["image/jpeg"]["schema"]["format"] == "binary"  # the raw-body alternative
    loc = ops[("/v1/localize", "post")]
    assert loc["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Localized")
    assert {p["name"] for p in loc["parameters"]} == {"top_k", "rerank", "prior"}
    add = spec["components"]["schemas"][ops[("/v1/map/images", "post")]["requestBody"]["content"][
        "multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]]
    assert {"image", "name", "position"} <= set(add["properties"])
    assert set(spec["components"]["schemas"]["Localized"]["properties"]) == {"matches", "estimate", "reranked",
                                                                               "map_size"}


def test_openapi_documents_the_streams_list_history_events_and_one_confidence_field(svc_client):
    svc, client, _ = svc_client
    spec = client.get("/openapi.json").json()
    schemas, paths = spec["components"]["schemas"], spec["paths"]
    ok = {path: paths[path]["get"]["responses"]["200"]["content"] for path in
          ("/v1/streams", "/v1/streams/{stream_id}", "/v1/streams/{stream_id}/events")}
    assert ok["/v1/streams"]["application/json"]["schema"]["$ref"].endswith("/StreamList")
    assert ok["/v1/streams/{stream_id}"]["application/json"]["schema"]["$ref"].endswith("/StreamHistory")
    assert set(ok["/v1/streams/{stream_id}/events"]) == {"text/event-stream"}
    for path in ok:
        assert paths[path]["get"]["security"] == [{"HTTPBearer": ["read"]}, {"APIKeyHeader": ["read"]}]
    assert schemas["StreamHistory"]["properties"]["history"]["items"]["$ref"].endswith("/StreamFrame")
    assert schemas["StreamFrame"]["properties"]["state"]["enum"] == ["localized", "lost"]
    stream_est, est = schemas["StreamEstimate"]["properties"], schemas["Estimate"]["properties"]
    assert "confidence" in stream_est and "confidence" in est  # one name in /v1/localize and the streams
    assert stream_est["score"]["deprecated"] is True and "deprecated" not in stream_est["confidence"]


def test_a_streams_history_and_the_list_hold_what_its_frames_answered(svc_client):
    svc, client, _ = svc_client
    answers = [client.post("/v1/streams/hist/frames", files=_img(i)).json() for i in (40, 41, 42)]
    assert [a["frames"] for a in answers] == [1, 2, 3]
    for a in answers:
        est = a["estimate"]
        assert est["score"] == est["confidence"]  # the deprecated alias
        want = "localized" if est["confidence"] >= svc.s["stream_min_confidence"] else "lost"
        assert a["state"] == want
    for bar, state in ((float("inf"), "lost"), (-float("inf"), "localized")):  # the setting decides the state
        svc.s["stream_min_confidence"] = bar
        assert client.post("/v1/streams/bar/frames", files=_img(43)).json()["state"] == state
    svc.s["stream_min_confidence"] = 0.15
    real = svc.streams.add
    svc.streams.add = lambda *a, **k: (*real(*a, **k)[:1], float("inf"), 1)  # SeqSLAM: no place to compare with
    try:
        alone = client.post("/v1/streams/inf/frames", files=_img(43)).json()
    finally:
        svc.streams.add = real
    assert alone["state"] == "localized" and alone["estimate"]["confidence"] is None  # JSON has no infinity
    assert client.get("/v1/streams/hist").json() == {"stream": "hist", "frames": 3, "history": answers}
    listed = {s["stream"]: s for s in client.get("/v1/streams").json()["streams"]}
    assert listed["hist"]["frames"] == 3 and listed["hist"]["last"] == answers[-1]
    latest_first = [s["stream"] for s in client.get("/v1/streams").json()["streams"]]
    assert latest_first[:3] == ["inf", "bar", "hist"]
    assert client.get("/v1/streams/nobody").status_code == 404
    assert client.get("/v1/streams/" + "x" * 65).status_code == 422
    assert client.delete("/v1/streams/hist").status_code == 200
    assert client.get("/v1/streams/hist").status_code == 404


def test_docs_are_hidden_with_keys_unless_the_setting_says_public(svc_client, tmp_path):
    svc, *_ = svc_client
    keys, plain = tmp_path / "keys.json", svc.keys
    add_key(keys, "robot", ["read"])
    try:
        svc.keys = KeyStore(keys)
        hidden = TestClient(create_app(svc), base_url="http://127.0.0.1")
        assert hidden.get("/openapi.json").status_code == 404 and hidden.get("/docs").status_code == 404
        svc.s["public_docs"] = True
        shown = TestClient(create_app(svc), base_url="http://127.0.0.1")
        assert shown.get("/openapi.json").status_code == 200 and shown.get("/docs").status_code == 200
    finally:
        svc.keys, svc.s["public_docs"] = plain, None


def test_map_changes_need_the_start_up_token_reads_do_not(svc_client):
    svc, client, _ = svc_client
    form = {"name": f"csrf/{map_name(50)}"}
    r = client.post("/v1/map/images", files=_img(45), data=form)  # what a cross-site form post can send
    assert r.status_code == 401 and "token" in r.json()["detail"]
    assert client.delete(f"/v1/map/images/{map_name(50)}").status_code == 401
    assert client.post("/v1/map/images", files=_img(45), data=form, headers={"Authorization": "Bearer x"}
                       ).status_code == 401
    assert form["name"] not in svc.map.ids and map_name(50) in svc.map.ids
    assert client.get("/v1/map").status_code == 200  # reads stay open on loopback
    assert client.post("/v1/localize", files=_img(100)).json()["matches"][0]["name"] == map_name(100)
    r = client.post("/v1/map/images", files=_img(45), data=form, headers=WRITE)
    assert r.status_code == 201 and form["name"] in svc.map.ids
    assert client.delete(f"/v1/map/images/{form['name']}", headers=WRITE).status_code == 200


def test_a_foreign_origin_cannot_change_the_map_even_with_the_token(svc_client):
    svc, client, _ = svc_client
    n = len(svc.map.ids)
    for h in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
              {"Origin": "http://127.0.0.1:8001"}):  # another port is another origin
        r = client.post("/v1/map/images", files=_img(45), data={"name": "o.jpg"}, headers={**WRITE, **h})
        assert r.status_code == 403 and "cross-origin" in r.json()["detail"], h
        assert client.delete(f"/v1/map/images/{map_name(0)}", headers={**WRITE, **h}).status_code == 403
    assert len(svc.map.ids) == n and "o.jpg" not in svc.map.ids
    same = {**WRITE, "Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}  # the page itself
    assert client.post("/v1/map/images", files=_img(45), data={"name": "o.jpg"}, headers=same).status_code == 201
    assert client.delete("/v1/map/images/o.jpg", headers=same).status_code == 200
    assert client.get("/v1/map", headers={"Origin": "http://evil.example"}).status_code == 200  # a read


def test_a_foreign_host_is_refused_dns_rebinding(svc_client):
    svc, client, _ = svc_client
    for host in ("attacker.example", "attacker.example:8000", "127.0.0.1.attacker.example"):
        assert client.get("/v1/map", headers={"Host": host}).status_code == 403
        assert client.get(f"/v1/map/images/{map_name(10)}/thumbnail", headers={"Host": host}).status_code == 403
        assert client.post("/v1/map/images", files=_img(45), data={"name": "h.jpg"},
                           headers={**WRITE, "Host": host}).status_code == 403
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST"):
        assert client.get("/v1/map", headers={"Host": host}).status_code == 200, host
    assert host_name("[::1]:8000") == "::1" and host_name("a.example:80") == "a.example"
    assert allowed_hosts("0.0.0.0", []) is None  # every interface (keys required): any name
    assert allowed_hosts("0.0.0.0", ["vpr.example"]) == {"0.0.0.0", "vpr.example"}
    assert allowed_hosts("10.0.0.5", []) == {"10.0.0.5"}


def test_stream_frames_after_the_map_grew_by_several_images(svc_client):
    svc, client, _ = svc_client
    outs = [client.post("/v1/streams/grow/frames", files=_img(i)) for i in (58, 59)]
    for k in range(3):  # the stream's route was made before these
        assert client.post("/v1/map/images", files=_img(70 + k), data={"name": f"grow/{k}.jpg"},
                           headers=WRITE).status_code == 201
        outs.append(client.post("/v1/streams/grow/frames", files=_img(60 + k)))
    assert [o.status_code for o in outs] == [200] * 5
    assert [o.json()["frames"] for o in outs] == [1, 2, 3, 4, 5]
    assert outs[-1].json()["frame_best"]["name"] == map_name(60)
    for k in range(3):
        client.delete(f"/v1/map/images/grow/{k}.jpg", headers=WRITE)


def test_search_and_matching_run_off_the_event_loop(svc_client, monkeypatch):
    import asyncio

    svc, client, _ = svc_client
    seen = []
    search = svc.search

    def spy(desc, k):
        try:
            asyncio.get_running_loop()
            seen.append("event loop")
        except RuntimeError:
            seen.append("worker")
        return search(desc, k)

    monkeypatch.setattr(svc, "search", spy)
    assert client.post("/v1/localize", files=_img(30)).status_code == 200
    assert client.post("/v1/streams/loop/frames", files=_img(30)).status_code == 200
    assert len(seen) >= 2 and set(seen) == {"worker"}


@pytest.mark.parametrize("fault", [JournalUnavailable("journal.log: a torn tail could not be cut off"),
                                   OSError(errno.ENOSPC, "No space left on device")])
def test_a_full_disk_answers_503_and_the_server_keeps_serving(svc_client, monkeypatch, fault):
    svc, client, _ = svc_client
    add, n = svc.writer.add, len(svc.map.ids)

    def full(*args):
        raise fault

    monkeypatch.setattr(svc.writer, "add", full)
    r = client.post("/v1/map/images", files=_img(45), data={"name": "full.jpg"}, headers=WRITE)
    assert r.status_code == 503 and r.json()["detail"].startswith("the map cannot be changed now")
    assert "Traceback" not in r.text and len(svc.map.ids) == n
    monkeypatch.setattr(svc.writer, "add", add)  # space freed
    assert client.post("/v1/map/images", files=_img(45), data={"name": "full.jpg"}, headers=WRITE).status_code == 201
    assert client.delete("/v1/map/images/full.jpg", headers=WRITE).status_code == 200


def _png_header(w: int, h: int) -> bytes:
    """A PNG whose header declares w x h pixels (its data is a stub: the size is refused before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))


def test_bad_uploads_and_options_get_4xx_with_a_clean_message(svc_client):
    svc, client, _ = svc_client
    r = client.post("/v1/localize", files={"image": b"not an image"})
    assert r.status_code == 422 and "cannot decode" in r.json()["detail"] and " at 0x" not in r.json()["detail"]
    big = client.post("/v1/localize", content=_png_header(20000, 20000), headers={"Content-Type": "image/png"})
    assert big.status_code == 413 and "pixels" in big.json()["detail"]  # 400 Mpx: past PIL's own bomb limit
    r = client.post("/v1/localize", params={"prior": "1e308,1e308,1e308"}, files=_img(10))
    assert r.status_code == 422 and "prior" in r.json()["detail"]
    r = client.post("/v1/map/images", files=_img(45), data={"name": "p.jpg", "position": "1e308,1"}, headers=WRITE)
    assert r.status_code == 422 and "p.jpg" not in svc.map.ids
    r = client.post("/v1/localize", data={"top_k": "2"}, files=_img(10))  # options as form fields, as before
    assert r.status_code == 200 and len(r.json()["matches"]) == 2


def test_names_with_spaces_and_unicode_work_for_thumbnail_and_delete(svc_client):
    svc, client, _ = svc_client
    assert client.post("/v1/localize", files=_img(20)).json()["matches"][0]["name"] in (ODD, map_name(20))
    path = f"/v1/map/images/{quote(ODD)}"
    r = client.get(path + "/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert client.get("/v1/map/images/no such image.jpg/thumbnail").status_code == 404
    writer = Client(key=TOKEN)
    writer.http = TestClient(client.app, base_url="http://127.0.0.1:8000", headers=WRITE)
    assert writer.remove(ODD) == {"name": ODD, "removed": True, "map_size": len(MAP_FRAMES)}  # the client quotes
    assert ODD not in svc.map.ids and client.get(path + "/thumbnail").status_code == 404
    assert len(svc.map.ids) == len(MAP_FRAMES)


def test_cli_refuses_a_port_out_of_range_and_adds_keys(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", str(tmp_path), "--port", "70000"])
    assert e.value.code == 2 and "0..65535" in capsys.readouterr().err
    keys = tmp_path / "keys.json"
    assert cli.main(["keys", "add", str(keys), "mapper", "--scopes", "read,write"]) == 0
    key = capsys.readouterr().out.strip()
    assert KeyStore(keys).identify(key, "x").scopes == {"read", "write"} and key not in keys.read_text()
    for text in ("{not json", '[{"name": "a"}]'):
        keys.write_text(text)
        assert cli.main(["serve", str(tmp_path), "--keys", str(keys)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"vprkit: error: {keys}") and len(err.strip().splitlines()) == 1


def test_replay_refuses_a_missing_folder_and_an_unreachable_server_in_one_line(tmp_path, capsys):
    assert cli.main(["replay", str(tmp_path / "nothing"), "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err == f"vprkit: error: image folder not found: {tmp_path / 'nothing'}\n"
    assert cli.main(["replay", str(DEMO / "query"), "--url", "http://127.0.0.1:9", "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vprkit: error: cannot reach the service at http://127.0.0.1:9") and err.count("\n") == 1


def test_a_stream_spanning_a_compaction_answers_names_of_the_new_map(svc_client):
    """A compaction renumbers the map (here: image 0 removed, so every id shifts by one); a stream begun before
    it must not answer the old numbering's names."""
    svc, client, _ = svc_client
    assert client.post("/v1/streams/span/frames", files=_img(100)).json()["estimate"]["name"] == map_name(100)
    assert client.delete(f"/v1/map/images/{map_name(0)}", headers=WRITE).status_code == 200
    svc.writer.compact()
    try:
        after = client.post("/v1/streams/span/frames", files=_img(100)).json()
        assert after["frame_best"]["name"] == map_name(100)
        assert after["estimate"]["name"] == map_name(100) and after["frames"] == 2
    finally:
        ref = DEMO / "ref" / "0000000.jpg"
        assert client.post("/v1/map/images", files={"image": ref.read_bytes()},
                           data={"name": map_name(0), "position": "0,0"}, headers=WRITE).status_code == 201


def test_serve_preset_and_set_configure_the_service_it_starts(tmp_path, monkeypatch):
    """`vprkit serve --preset hmm --set ...`: the service the command starts answers with those settings: two
    matches by default (top_k), streams localized by the HMM (the estimates and confidences of a
    `SequenceLocalizer(index, "hmm")` fed the same frames, which SeqSLAM's differ from) and the line set."""
    from PIL import Image

    from vprkit.sequence.localizer import SequenceLocalizer

    idx, started = build_index(tmp_path), {}

    def run(index_dir, host, port, keys, settings, device):  # what `vprkit serve` runs, without uvicorn
        started["app"], started["svc"] = build(index_dir, keys, settings, device, host, token=TOKEN)

    monkeypatch.setattr("vprkit.service.server.run", run)
    assert cli.main(["serve", str(idx), "--preset", "hmm", "--set", "top_k=2", "stream_min_confidence=0.5"]) == 0
    s = started["svc"].s
    assert (s["preset"], s["stream_preset"], s["top_k"], s["stream_min_confidence"]) == ("hmm", "hmm", 2, 0.5)
    frames = range(28, 40)
    hmm, seqslam = SequenceLocalizer(idx, "hmm"), SequenceLocalizer(idx, "seqslam-candidates")
    ref = [hmm.add(Image.open(query(i))) for i in frames]
    assert not np.allclose([c for _, c in ref], [seqslam.add(Image.open(query(i)))[1] for i in frames], atol=1e-3)
    with TestClient(started["app"], base_url="http://127.0.0.1:8000") as client:
        assert len(client.post("/v1/localize", files=_img(30)).json()["matches"]) == 2
        answers = [client.post("/v1/streams/s/frames", files=_img(i)).json() for i in frames]
    assert [a["estimate"]["name"] for a in answers] == [hmm.names[p] for p, _ in ref]
    np.testing.assert_allclose([a["estimate"]["confidence"] for a in answers], [c for _, c in ref], atol=1e-5)
    assert [a["state"] for a in answers] == ["localized" if c >= 0.5 else "lost" for _, c in ref]
    assert {a["state"] for a in answers} == {"localized", "lost"}  # the line splits these frames
