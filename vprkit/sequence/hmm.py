"""Hidden Markov model over map places: forward filtering (online) and Viterbi decoding (offline).

States are map places. Transitions are local (each place's likely predecessors, with log-probabilities) plus a
uniform `jump` probability of arriving anywhere, which lets the filter recover from kidnapping or a route the map
does not cover. Local predecessors come from the map order (steps of -back .. max_step places, Gaussian in the
step around `velocity`: stops and speed changes are likely, long jumps are not) or from map positions (places
within `radius`, Gaussian in the distance around `step` metres: maps that are not one route).
Emissions: log e(place) = (similarity - best similarity of the frame) / temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


@dataclass
class Transitions:
    """Predecessors of each place, (M, K) indices padded with 0, their log-probabilities padded with -inf, and
    the log-probability of a jump from anywhere to a given place."""

    prev: np.ndarray
    logp: np.ndarray
    log_jump: float


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.squeeze(top, axis) + np.log(np.sum(np.exp(x - top), axis=axis))


def route_transitions(num_places: int, velocity: float = 1.0, sigma: float = 1.0, max_step: int = 4,
                      back: int = 1, jump: float = 1e-3) -> Transitions:
    """Places along a route in map order: from place i to i + d for d in [-back, max_step]."""
    steps = np.arange(-back, max_step + 1)
    logp = -0.5 * ((steps - velocity) / sigma) ** 2
    logp += np.log1p(-jump) - _logsumexp(logp, axis=0)  # local moves carry 1 - jump of the mass
    places = np.arange(num_places)
    prev = places[:, None] - steps[None, :]
    ok = (prev >= 0) & (prev < num_places)
    return Transitions(np.where(ok, prev, 0), np.where(ok, logp[None, :], -np.inf), np.log(jump / num_places))


def position_transitions(positions: np.ndarray, radius: float, step: float = 0.0, sigma: float = 1.0,
                         jump: float = 1e-3, max_neighbours: int = 32) -> Transitions:
    """Places with coordinates (M, D): moves to any place within `radius`, likelier the closer the distance
    travelled is to `step`; each place's outgoing moves are normalised over its neighbours."""
    positions = np.asarray(positions, dtype=np.float64).reshape(len(positions), -1)
    tree = cKDTree(positions)
    k = min(max_neighbours, len(positions))
    dist, idx = tree.query(positions, k=k, distance_upper_bound=radius)
    ok = np.isfinite(dist)
    out_logp = np.where(ok, -0.5 * ((dist - step) / sigma) ** 2, -np.inf)
    out_logp -= np.log(np.exp(out_logp).sum(axis=1, keepdims=True))  # from place i: sums to 1 over its moves
    out_logp += np.log1p(-jump)
    # transpose the sparse "from i to idx[i, k]" table into "to j from prev[j, :]"
    src = np.repeat(np.arange(len(positions)), k)[ok.ravel()]
    dst, lp = idx.ravel()[ok.ravel()], out_logp.ravel()[ok.ravel()]
    order = np.argsort(dst, kind="stable")
    src, dst, lp = src[order], dst[order], lp[order]
    counts = np.bincount(dst, minlength=len(positions))
    width = max(int(counts.max()), 1)
    slot = np.arange(len(dst)) - np.repeat(np.cumsum(counts) - counts, counts)
    prev = np.zeros((len(positions), width), dtype=np.int64)
    logp = np.full((len(positions), width), -np.inf)
    prev[dst, slot], logp[dst, slot] = src, lp
    return Transitions(prev, logp, np.log(jump / len(positions)))


def emission(similarity: np.ndarray, temperature: float) -> np.ndarray:
    """Log emission of each place for a frame's similarities (M,) (or (T, M)): relative to the best place."""
    similarity = np.asarray(similarity, dtype=np.float64)
    return (similarity - similarity.max(axis=-1, keepdims=True)) / temperature


def predict(log_belief: np.ndarray | None, trans: Transitions) -> np.ndarray:
    """Log prior over places for the next frame (uniform before the first frame)."""
    m = len(trans.prev)
    if log_belief is None:
        return np.full(m, -np.log(m))
    local = _logsumexp(log_belief[trans.prev] + trans.logp, axis=1)
    return np.logaddexp(local, trans.log_jump + _logsumexp(log_belief, axis=0))


def filter_step(log_belief: np.ndarray | None, log_emission: np.ndarray, trans: Transitions) -> np.ndarray:
    """One forward-filtering step: the normalised log posterior over places after this frame."""
    post = predict(log_belief, trans) + log_emission
    return post - _logsumexp(post, axis=0)


def viterbi(log_emissions: np.ndarray, trans: Transitions) -> np.ndarray:
    """Most likely place sequence for emissions (T, M), starting from a uniform prior."""
    t_len, m = log_emissions.shape
    back = np.empty((t_len, m), dtype=np.int64)
    delta = -np.log(m) + log_emissions[0]
    back[0] = -1
    for t in range(1, t_len):
        cand = delta[trans.prev] + np.logaddexp(trans.logp, trans.log_jump)  # a jump can also land here
        arg = np.argmax(cand, axis=1)
        best = cand[np.arange(m), arg]
        best_prev = trans.prev[np.arange(m), arg]
        top = int(np.argmax(delta))
        jump_better = delta[top] + trans.log_jump > best
        back[t] = np.where(jump_better, top, best_prev)
        delta = np.where(jump_better, delta[top] + trans.log_jump, best) + log_emissions[t]
    path = np.empty(t_len, dtype=np.int64)
    path[-1] = int(np.argmax(delta))
    for t in range(t_len - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path
