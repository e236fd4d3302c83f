"""Sequence matching against independent re-derivations: plain-loop SeqSLAM, brute-force HMM, known paths."""

import itertools

import numpy as np
import pytest

from vprkit.index import faiss_index
from vprkit.sequence import hmm, matcher, pipeline, seqslam
from vprkit.sequence.localizer import SequenceLocalizer


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def stream_on(path, num_places=200, dim=256, noise=0.0, seed=0):
    """Map of random unit places and a query stream that visits `path` (place per frame)."""
    rng = np.random.default_rng(seed)
    map_desc = unit(rng.normal(size=(num_places, dim)))
    q = unit(map_desc[path] + noise * rng.normal(size=(len(path), dim)) / np.sqrt(dim))
    return q, map_desc


def loop_enhance(d, window):
    """OpenSeqSLAM's contrast enhancement written cell by cell."""
    out = np.zeros_like(d, dtype=np.float64)
    for t in range(d.shape[0]):
        for j in range(d.shape[1]):
            v = d[t, max(0, j - window // 2): min(d.shape[1], j + window // 2 + 1)]
            out[t, j] = (d[t, j] - v.mean()) / v.std(ddof=1)
    return out


def loop_seqslam(q, m, ds, mode, vels, window):
    """Line search with plain loops: for each frame, end place and velocity, the mean enhanced difference."""
    e = loop_enhance(1.0 - q.astype(np.float64) @ m.T.astype(np.float64), window)
    offs = range(-(ds - 1), 1) if mode == "online" else range(-(ds // 2), ds - ds // 2)
    est, costs = [], np.zeros(e.shape)
    for t in range(len(q)):
        for c in range(len(m)):
            best = np.inf
            for v in vels:
                cells = [e[t + o, min(max(c + int(np.rint(v * o)), 0), len(m) - 1)]
                         for o in offs if 0 <= t + o < len(q)]
                best = min(best, sum(cells) / len(cells))
            costs[t, c] = best
        est.append(int(np.argmin(costs[t])))
    return np.array(est), costs


def test_enhance_matches_loop():
    d = np.random.default_rng(1).random((3, 17))
    assert seqslam.enhance(d, 6) == pytest.approx(loop_enhance(d, 6), abs=1e-5)


def test_velocity_set_is_openseqslams():
    assert seqslam.velocities(0.8, 1.2, 10) == pytest.approx([0.8, 0.9, 1.0, 1.1, 1.2])
    assert seqslam.velocities(0.8, 1.2, 5) == pytest.approx([0.8, 1.0, 1.2])


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_seqslam_matches_plain_loop(mode):
    rng = np.random.default_rng(2)
    q, m = unit(rng.normal(size=(9, 8))), unit(rng.normal(size=(15, 8)))
    conf = pipeline.CONFIG.resolve("seqslam", ds=4, mode=mode, enhance=6, exclude=4, top_k=15)
    est, _, ids, scores = pipeline.match(conf, q, m)
    ref_est, ref_costs = loop_seqslam(q, m, 4, mode, seqslam.velocities(0.8, 1.2, 4), 6)
    assert est.tolist() == ref_est.tolist()
    assert -scores == pytest.approx(np.take_along_axis(ref_costs, ids, 1), abs=1e-4)


def smooth_route(positions, num_places=200, dim=256, width=0.7, seed=0):
    """(frames at fractional route positions, map places at whole ones): descriptors blend random place
    signatures with Gaussian weights, so the difference grows smoothly with the distance along the route."""
    g = np.random.default_rng(seed).normal(size=(num_places, dim))

    def at(x):
        return unit(np.exp(-0.5 * ((np.asarray(x, float)[:, None] - np.arange(num_places)) / width) ** 2) @ g)
    return at(positions), at(np.arange(num_places))


def test_known_path_velocity_and_jump_recovered():
    """25 frames at 1.2 places per frame, a jump of 110 places, 25 frames at 1 place per frame. Offline the nearest
    place is recovered exactly; online too on the 1.0 stretch, while at 1.2 a frame 0.4 place short of a place
    can be put on the previous one (the past frames fit a 1.0 line through it better). Windows that straddle
    the jump are left out (a straight line cannot follow a jump: the HMM can, below)."""
    x = np.r_[10 + 1.2 * np.arange(25), 120 + np.arange(25.0)]
    q, m = smooth_route(x)
    truth = np.rint(x).astype(int)
    for mode, ds in (("online", 5), ("offline", 6), ("online", 10)):
        est = pipeline.match(pipeline.CONFIG.resolve("seqslam", ds=ds, mode=mode), q, m)[0]
        offs = seqslam.frame_offsets(ds, mode)
        straddle = [t for t in range(len(x)) if t + offs.min() < 25 <= t + offs.max()]
        clean = np.setdiff1d(np.arange(len(x)), straddle)
        if mode == "offline":
            assert est[clean].tolist() == truth[clean].tolist()
        else:
            assert est[clean[clean >= 25]].tolist() == truth[clean[clean >= 25]].tolist()
            assert np.abs(est[clean] - truth[clean]).max() <= 1


def test_hmm_recovers_stop_speed_change_and_jump():
    path = np.r_[10 + np.arange(8), [18, 18, 18, 18], 19 + 2 * np.arange(6), 150 + np.arange(8)]
    q, m = stream_on(path, noise=0.5)
    for preset in ("hmm", "hmm-viterbi"):
        est = pipeline.match(pipeline.CONFIG.resolve(preset, temperature=0.05), q, m)[0]
        assert est.tolist() == path.tolist()


def dense(trans):
    """Transition matrix T[i, j] = P(next = j | now = i) from the predecessor table."""
    m = len(trans.prev)
    t = np.full((m, m), np.exp(trans.log_jump))
    for j in range(m):
        for i, lp in zip(trans.prev[j], trans.logp[j]):
            if np.isfinite(lp):
                t[i, j] += np.exp(lp)
    return t


def test_viterbi_and_filter_match_brute_force():
    rng = np.random.default_rng(3)
    trans = hmm.route_transitions(4, velocity=1.0, sigma=1.0, max_step=2, back=1, jump=0.05)
    t_mat = dense(trans)
    log_e = rng.normal(size=(5, 4))
    best, best_path = -np.inf, None
    for p in itertools.product(range(4), repeat=5):
        s = -np.log(4) + log_e[0, p[0]] + sum(np.log(t_mat[a, b]) + log_e[k + 1, b]
                                              for k, (a, b) in enumerate(zip(p, p[1:])))
        if s > best:
            best, best_path = s, p
    assert hmm.viterbi(log_e, trans).tolist() == list(best_path)
    belief, alpha = None, np.full(4, 0.25) * np.exp(log_e[0])
    for k, row in enumerate(log_e):
        belief = hmm.filter_step(belief, row, trans)
        if k:
            alpha = (alpha @ t_mat) * np.exp(row)
        assert np.exp(belief) == pytest.approx(alpha / alpha.sum(), abs=1e-9)


def test_position_transitions_are_distributions():
    pos = np.random.default_rng(4).random((30, 2)) * 10
    t_mat = dense(hmm.position_transitions(pos, radius=3.0, step=1.0, jump=0.01))
    assert t_mat.sum(axis=1) == pytest.approx(np.ones(30))


def test_candidates_equal_full_search_costs():
    path = np.floor(1.1 * np.arange(30)).astype(int)  # starts at the map's first place: clamped lines
    q, m = stream_on(path, noise=1.0, seed=5)
    full = pipeline.CONFIG.resolve("seqslam", ds=6, top_k=200)
    _, _, ids, scores = pipeline.match(full, q, m)
    full_cost = np.empty((len(q), len(m)))
    np.put_along_axis(full_cost, ids, -scores, 1)
    cand = {**full, "search": "candidates", "top_k": 5}
    offs = seqslam.frame_offsets(6, "online")
    shift = seqslam.shifts(seqslam.velocities(0.8, 1.2, 6), offs)
    top = matcher.exact_search(m)(q, 5)
    for t in (0, 3, 17, 29):
        frames = t + offs
        ok = frames >= 0
        places, costs = matcher.candidate_costs(q[frames[ok]], np.where(ok, frames - frames[ok][0], -1), m, top[t],
                                                shift, cand)
        assert costs == pytest.approx(full_cost[t, places], abs=1e-4)


@pytest.mark.parametrize("preset,search", [("seqslam", "full"), ("seqslam", "candidates"), ("hmm", "full"),
                                           ("hmm", "candidates")])
def test_streaming_equals_batch_online(preset, search):
    path = np.floor(5 + 1.1 * np.arange(40)).astype(int)
    q, m = stream_on(path, num_places=80, dim=32, noise=2.0, seed=6)
    conf = pipeline.CONFIG.resolve(preset, search=search)
    est, confidence, _, _ = pipeline.match(conf, q, m)
    mi = faiss_index.MapIndex(faiss_index.build(m), {"names": [f"{i:03d}.png" for i in range(len(m))]})
    loc = SequenceLocalizer(mi, conf, map_desc=m)
    out = [loc.add(x) for x in q]
    assert [o[0] for o in out] == est.tolist()
    assert [o[1] for o in out] == pytest.approx(confidence.tolist(), rel=1e-4, abs=1e-5)
    with pytest.raises(ValueError, match="size 3, but the index holds 32-d"):
        loc.add(np.zeros(3, dtype=np.float32))
    # a fork (one per service stream) shares the map's descriptors and starts from a fresh state
    fresh = SequenceLocalizer(mi, conf, map_desc=m).fork()
    assert fresh.stream is not loc.stream and fresh.stream.map is fresh._new_stream().map
    again = [fresh.add(x) for x in q]
    assert [a[0] for a in again] == [o[0] for o in out]
    assert [a[1] for a in again] == pytest.approx([o[1] for o in out], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("preset,search", [("seqslam", "candidates"), ("hmm", "full")])
def test_removed_images_are_not_places_of_the_route(preset, search):
    """A localizer on a map with removed (not yet compacted) images answers as one built on the live images only."""
    path = np.floor(5 + 1.1 * np.arange(30)).astype(int)
    q, m = stream_on(path, num_places=60, dim=32, noise=2.0, seed=7)
    names = [f"{i:03d}.png" for i in range(len(m))]
    gone = {9, 10, 11, 30, 59}  # on the stream's path (9-11, 30) and at the end of the route
    mi = faiss_index.MapIndex(faiss_index.build(m), {"names": list(names)})
    for i in gone:
        mi.remove(names[i])
    live = [i for i in range(len(m)) if i not in gone]
    ref = faiss_index.MapIndex(faiss_index.build(m[live]), {"names": [names[i] for i in live]})
    conf = pipeline.CONFIG.resolve(preset, search=search)
    loc, want_loc = SequenceLocalizer(mi, conf, map_desc=m), SequenceLocalizer(ref, conf, map_desc=m[live])
    got = [loc.add(x) for x in q]
    want = [want_loc.add(x) for x in q]
    assert [names[g] for g, _ in got] == [ref.names[w] for w, _ in want]
    assert not gone & {g for g, _ in got}
    assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-4, abs=1e-5)


def test_layout_from_timestamps_positions_and_names(tmp_path):
    from vprkit.data.groundtruth import GroundTruthError
    from vprkit.sequence.order import layout

    names = ["a.png", "b.png", "c.png"]
    (tmp_path / "t.csv").write_text("name,timestamp\na.png,3.5\nb.png,1.0\nc.png,2.0\n")
    assert layout(str(tmp_path / "t.csv"), names).order.tolist() == [1, 2, 0]
    (tmp_path / "p.csv").write_text("name,easting,northing\na.png,0,0\nb.png,5,0\nc.png,5,5\n")
    assert layout(str(tmp_path / "p.csv"), names).positions.tolist() == [[0, 0], [5, 0], [5, 5]]
    assert layout("utm", ["x@10.0@20.0@.jpg"]).positions.tolist() == [[10.0, 20.0]]
    with pytest.raises(GroundTruthError, match="no timestamp"):
        layout(str(tmp_path / "t.csv"), names + ["d.png"])


def test_hmm_on_a_map_that_is_not_a_route():
    """Places on a 10 x 10 grid stored in shuffled order; the stream walks a turning path between neighbours."""
    rng = np.random.default_rng(7)
    grid = np.array([(x, y) for x in range(10) for y in range(10)], dtype=float)
    perm = rng.permutation(100)
    pos = grid[perm]
    walk = [(2, 2), (3, 2), (4, 2), (4, 3), (4, 4), (3, 4), (3, 5), (3, 6), (4, 6), (5, 6)]
    path = np.array([int(np.flatnonzero((pos == w).all(axis=1))[0]) for w in walk])
    q, m = stream_on(path, num_places=100, dim=64, noise=3.0, seed=8)
    conf = pipeline.CONFIG.resolve("hmm-viterbi", radius=1.5, step=1.0, sigma=0.5, temperature=0.05)
    assert pipeline.match(conf, q, m, positions=pos)[0].tolist() == path.tolist()
