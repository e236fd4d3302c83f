"""Service parts without a server: position estimate, stream localizer, rate limit, keys, dynamic batching."""

import asyncio
import json

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")

from vprkit.service.auth import KeyStore, RateLimiter, add_key, hash_key  # noqa: E402
from vprkit.service.batching import Batcher  # noqa: E402
from vprkit.service.estimate import estimate, posterior  # noqa: E402
from vprkit.service.streams import Streams, WindowLocalizer  # noqa: E402


def test_estimate_is_the_weighted_mean_of_the_candidates_near_the_best_by_hand():
    scores = np.array([0.9, 0.85, 0.8, 0.7])
    positions = [[0.0, 0.0], [10.0, 0.0], [500.0, 0.0], None]
    w = posterior(scores, positions, temp=0.1)
    e = np.exp([0.0, -0.5, -1.0, -2.0])
    assert w == pytest.approx(e / e.sum())
    est = estimate(["a", "b", "c", "d"], positions, w, radius=25)
    wa, wb = e[0] / e.sum(), e[1] / e.sum()
    assert est["name"] == "a"
    assert est["position"] == pytest.approx([10.0 * wb / (wa + wb), 0.0])
    assert est["confidence"] == pytest.approx(wa + wb)


def test_a_position_prior_moves_the_weight_to_candidates_near_it():
    scores, positions = np.array([0.9, 0.88]), [[0.0, 0.0], [100.0, 0.0]]
    w = posterior(scores, positions, temp=0.1, prior=(100.0, 0.0, 10.0))
    e = np.exp([0.0, -0.2]) * np.exp([-(100.0 ** 2) / 200, 0.0])
    assert w == pytest.approx(e / e.sum())
    assert estimate(["a", "b"], positions, w, 5)["name"] == "b"
    assert posterior(scores, [None, None], 0.1, (0, 0, 1)) == pytest.approx(posterior(scores, [None, None], 0.1))


def test_window_localizer_follows_a_straight_path_where_one_frame_alone_is_wrong():
    """Map of 30 places; query frame t is place 5 + t. Frame 4's best single match is a look-alike (place 25);
    its true place is second. The window must still say place 9."""
    n = 30
    sims = np.full((6, n), 0.1)
    for t in range(6):
        sims[t, 5 + t] = 0.8
    sims[4, 25] = 0.9

    def search(frame, k):
        t = int(frame[0, 0])
        ids = np.argsort(-sims[t], kind="stable")[:k]
        return sims[t][ids][None], ids[None]

    loc = WindowLocalizer(search, window=4, k=5, velocities=(0, 1, 2))
    out = [loc.add(np.array([t], dtype=np.float32)) for t in range(5)]
    assert search(np.array([[4.0]]), 1)[1][0, 0] == 25
    assert out[4][0] == 9
    # frames 1..4 along v=1 from place 9: 0.8 each, except frame 4 itself (0.8 too: place 9 is in its top 5)
    assert out[4][1] == pytest.approx(0.8)
    assert len(loc.frames) == 4  # bounded memory: the window only


def test_streams_expire_when_idle_and_stay_bounded():
    made = []

    class Counter:
        def __init__(self, search):
            made.append(self)
            self.n = 0

        def add(self, frame):
            self.n += 1
            return self.n, 1.0

    s = Streams(Counter, idle_s=10, max_streams=2)
    assert s.add("a", None, None, now=0)[2] == 1
    assert s.add("a", None, None, now=5)[2] == 2
    assert s.add("a", None, None, now=16)[2] == 1  # idle 11 s > 10: a new stream
    s.add("b", None, None, now=17)
    s.add("c", None, None, now=18)  # a third live stream evicts the least recently used (a)
    assert len(s) == 2 and s.add("b", None, None, now=19)[2] == 2 and s.add("a", None, None, now=19)[2] == 1
    assert s.drop("b") and not s.drop("zzz")
    n = len(made)
    assert s.add("a", None, None, now=20, generation="after compaction") == (1, 1.0, 2)  # new localizer, count on
    assert len(made) == n + 1 and s.add("a", None, None, now=21, generation="after compaction")[0] == 2


def test_rate_limiter_token_bucket_by_hand():
    r = RateLimiter(rate=2.0, burst=3)
    assert [r.allow("k", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert r.allow("k", now=0.0) == pytest.approx(0.5)  # one token takes 1 / rate
    assert r.allow("k", now=0.5) == 0.0
    assert r.allow("other", now=0.5) == 0.0  # per caller
    assert r.allow("k", now=0.5, rate=10.0, burst=1) == pytest.approx(0.1)


def test_keys_are_stored_hashed_and_identify_their_scopes(tmp_path):
    path = tmp_path / "keys.json"
    k_read = add_key(path, "robot", ["read"])
    k_write = add_key(path, "admin", ["read", "write"])
    text = path.read_text()
    assert k_read not in text and hash_key(k_read) in text
    store = KeyStore(path)
    assert store.identify(k_read, "x").scopes == {"read"}
    assert store.identify(k_write, "x").scopes == {"read", "write"}
    assert store.identify("wrong", "x") is None and store.identify(None, "x") is None
    assert KeyStore(None).identify(None, "1.2.3.4").scopes == {"read"}  # without keys: read, and the token writes
    assert KeyStore(None, "tok").identify("tok", "1.2.3.4").scopes == {"read", "write"}
    assert KeyStore(None).identify("wrong", "1.2.3.4") is None
    path.write_text(json.dumps({"keys": [{"name": "bad", "sha256": "00", "scopes": ["admin"]}]}))
    with pytest.raises(ValueError, match="bad key entry"):
        KeyStore(path)


def test_concurrent_submissions_share_forward_passes_and_get_their_own_rows():
    sizes = []
    fn = lambda x: x.flatten(1).sum(1, keepdim=True).numpy() * np.array([[1.0, 2.0]])  # noqa: E731
    b = Batcher(fn, max_batch=7, wait_s=5.0, on_batch=sizes.append)  # full at 7: no waiting

    async def go():
        xs = [torch.full((1, 2, 2), float(i)) for i in range(6)] + [torch.full((1, 4, 2), 1.0)]
        return await asyncio.gather(*(b.submit(x) for x in xs))

    out = asyncio.run(go())
    b.close()
    assert [o.tolist() for o in out] == [[4.0 * i, 8.0 * i] for i in range(6)] + [[8.0, 16.0]]
    assert sorted(sizes) == [1, 6]  # one pass for the six equal shapes, one for the odd one


def test_a_failing_forward_pass_reaches_every_waiting_request():
    def fn(x):
        raise RuntimeError("boom")

    b = Batcher(fn, max_batch=4, wait_s=0.05)

    async def go():
        return await asyncio.gather(*(b.submit(torch.zeros(1, 2, 2)) for _ in range(3)), return_exceptions=True)

    out = asyncio.run(go())
    b.close()
    assert all(isinstance(o, RuntimeError) for o in out)


def test_the_outer_layer_answers_504_past_the_time_limit_and_counts_it():
    from types import SimpleNamespace

    from vprkit.service.metrics import Metrics
    from vprkit.service.middleware import Limits

    async def never(scope, receive, send):
        await asyncio.Event().wait()

    svc = SimpleNamespace(s={"timeout_s": 0.05, "body_timeout_s": 5, "max_body_bytes": 100}, metrics=Metrics())
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(Limits(never, svc)({"type": "http", "headers": []}, receive, send))
    assert sent[0]["status"] == 504 and b"took over" in sent[1]["body"]
    assert b'vprkit_requests_total{route="other",status="504"} 1.0' in svc.metrics.text()
    sent.clear()
    asyncio.run(Limits(never, svc)({"type": "http", "headers": [(b"content-length", b"101")]}, receive, send))
    assert sent[0]["status"] == 413


def test_the_deadlines_end_once_the_body_is_in_and_the_answer_has_begun():
    """An event stream (the page's live view) outlives `timeout_s`, and waiting for its watcher's disconnect is no
    stalled body."""
    from types import SimpleNamespace

    from vprkit.service.metrics import Metrics
    from vprkit.service.middleware import Limits

    async def events(scope, receive, send):
        assert (await receive())["type"] == "http.request"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.2)  # 4 x timeout_s
        assert (await receive())["type"] == "http.disconnect"  # came after 0.2 s > body_timeout_s
        await send({"type": "http.response.body", "body": b"late", "more_body": False})

    svc = SimpleNamespace(s={"timeout_s": 0.05, "body_timeout_s": 0.05, "max_body_bytes": 100}, metrics=Metrics())
    calls, sent = [], []

    async def receive():
        calls.append(1)
        if len(calls) > 1:
            await asyncio.sleep(0.2)
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(Limits(events, svc)({"type": "http", "headers": []}, receive, send))
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"late" and len(sent) == 2
    assert b'vprkit_requests_total{route="other",status="200"} 1.0' in svc.metrics.text()


def test_serve_refuses_a_public_address_without_keys_and_a_folder_that_is_no_index(tmp_path):
    from vprkit import cli
    from vprkit.service.server import run

    with pytest.raises(ValueError, match="without --keys"):
        run(tmp_path, host="0.0.0.0")
    assert cli.main(["serve", str(tmp_path / "nothing")]) == 2
    assert not any(tmp_path.iterdir())  # no lock file or anything else left beside it


def test_a_streams_history_is_bounded_and_the_list_is_most_recent_first():
    class Const:
        def __init__(self, search):
            pass

        def add(self, frame):
            return 7, 0.5

    s = Streams(Const, idle_s=10, history=3)
    for t in range(5):
        s.add("a", None, None, now=t)
        s.remember("a", {"frames": t + 1})
    assert s.history("a") == [{"frames": 3}, {"frames": 4}, {"frames": 5}]  # the last 3, oldest first
    s.add("b", None, None, now=6)
    s.remember("gone", {"frames": 1})  # no such stream: nothing kept
    assert s.history("gone") is None and s.history("b") == []
    assert [(x["stream"], x["frames"], x["idle_s"], x["last"]) for x in s.summary(now=8)] == [
        ("b", 1, 2, None), ("a", 5, 4, {"frames": 5})]
    assert [x["stream"] for x in s.summary(now=14.5)] == ["b"]  # a: idle 10.5 s > 10, expired


def test_a_watcher_that_falls_behind_loses_its_oldest_answers_only():
    from vprkit.service.streams import Feeds

    async def run():
        f = Feeds(depth=2)
        slow, other = f.subscribe("a"), f.subscribe("b")
        for i in range(4):
            f.publish("a", i)
        assert [slow.get_nowait() for _ in range(slow.qsize())] == [2, 3] and other.empty()
        f.unsubscribe("a", slow)
        f.publish("a", 9)  # nobody watches a: nothing kept
        assert len(f) == 1 and slow.empty()

    asyncio.run(run())


def test_retry_after_header_as_seconds_or_an_http_date():
    import time
    from email.utils import formatdate

    from vprkit.client import retry_after

    assert retry_after("3") == 3.0 and retry_after("0.5") == 0.5 and retry_after("-4") == 0.0
    assert retry_after(None) == 1.0 and retry_after("soon", default=2.0) == 2.0
    assert 8.0 < retry_after(formatdate(time.time() + 10, usegmt=True)) <= 10.0
    assert retry_after(formatdate(time.time() - 100, usegmt=True)) == 0.0


def test_the_client_waits_retry_after_on_429_then_gives_up_with_the_error():
    import httpx

    from vprkit.client import Client, ServiceError

    answers = iter([(429, "2"), (429, "1"), (200, None)] + [(429, "1")] * 10)
    seen = []

    def handler(request):
        status, wait = next(answers)
        seen.append(request.url.path)
        if status == 429:
            return httpx.Response(429, json={"detail": "rate limit exceeded"}, headers={"Retry-After": wait})
        return httpx.Response(200, json={"frames": 1})

    slept = []
    c = Client("http://test", retries=3, sleep=slept.append)
    c.http = httpx.Client(base_url="http://test", transport=httpx.MockTransport(handler))
    assert c.frame("r", b"jpeg") == {"frames": 1}
    assert slept == [2.0, 1.0] and c.retried == 2 and c.waited_s == 3.0 and len(seen) == 3
    with pytest.raises(ServiceError) as e:  # 4 refusals in a row: retries (3) spent
        c.frame("r", b"jpeg")
    assert e.value.status == 429 and len(seen) == 7 and slept[2:] == [1.0, 1.0, 1.0]


def test_replay_sends_frames_in_name_order_at_the_given_rate(tmp_path):
    from vprkit.client import replay

    for name in ("b.jpg", "a.jpg", "c.png", "notes.txt"):
        (tmp_path / name).write_bytes(name.encode())
    now, slept, sent = [100.0], [], []

    class Fake:
        def sleep(self, s):
            slept.append(round(s, 6))
            now[0] += s

        def frame(self, stream, image):
            sent.append((stream, image.read_bytes()))
            now[0] += 0.03 if len(sent) != 2 else 0.25  # the second answer is slow (a 429's wait, say)
            return {"frames": len(sent)}

    out = list(replay(Fake(), tmp_path, "r1", fps=10, clock=lambda: now[0]))
    assert [n for n, _ in out] == ["a.jpg", "b.jpg", "c.png"]
    assert sent == [("r1", b"a.jpg"), ("r1", b"b.jpg"), ("r1", b"c.png")]
    assert slept == [0.0, 0.07, 0.0]  # 1/10 s apart; after the slow answer at once, no catch-up burst
    assert [n for n, _ in replay(Fake(), tmp_path, "r1", fps=0, start=1, limit=1)] == ["b.jpg"]
