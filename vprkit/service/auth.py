"""API keys (only their SHA-256 is stored) with read / write scopes, and a per-key rate limit.

Keys file (JSON): {"keys": [{"name": "robot-1", "sha256": "<hex>", "scopes": ["read"]}, ...]}; an entry may
set its own "rate_per_s" and "burst" (else the server's).
Create a key with `vprkit keys add KEYS_FILE NAME --scopes read,write`: it prints the key once.
Keys are 256-bit random strings, so a plain SHA-256 (no slow hash) cannot be brute-forced.
Without a keys file the server makes one random token at start (printed once, as Jupyter does): it is the only
credential that may change the map; anyone may read (the server then listens on loopback only).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..data.safeio import atomic_write

SCOPES = ("read", "write")
MAX_BUCKETS = 10_000


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Who made a request: a key's name (or the client address when keys are off) and its scopes."""

    name: str
    scopes: frozenset[str]
    rate: float | None = None  # requests per second; None: the server's default
    burst: float | None = None


class KeyStore:
    """The hashed keys of a keys file. Without one (`path` None): a random `token` made now has every scope, a
    caller without a key may read (named by its address), and any other key is unknown."""

    def __init__(self, path: str | Path | None, token: str | None = None) -> None:
        self.enabled = path is not None
        self.token = None if self.enabled else token or secrets.token_urlsafe(32)
        self.entries = [] if path is None else read_keys(Path(path))
        if self.token is not None:
            self.entries = [{"name": "token", "sha256": hash_key(self.token), "scopes": list(SCOPES)}]

    def identify(self, key: str | None, client: str) -> Caller | None:
        """The caller a key belongs to (constant-time compare), None for a missing or unknown key."""
        if not key:
            return None if self.enabled else Caller(f"client:{client}", frozenset({"read"}))
        digest = hash_key(key)
        found = None
        for e in self.entries:
            if hmac.compare_digest(digest, e["sha256"]):
                found = Caller(e["name"], frozenset(e["scopes"]), e.get("rate_per_s"), e.get("burst"))
        return found


def read_keys(path: Path) -> list[dict]:
    """The entries of a keys file; ValueError naming the file for anything but {"keys": [entries]}."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a JSON keys file ({exc})") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f'{path}: a keys file holds {{"keys": [...]}} (made by `vprkit keys add`)')
    for e in entries:
        ok = isinstance(e, dict) and isinstance(e.get("scopes"), list) and not set(e["scopes"]) - set(SCOPES)
        if not ok or not e.get("name") or not isinstance(e.get("sha256"), str) or len(e["sha256"]) != 64:
            name = e.get("name") if isinstance(e, dict) else e
            raise ValueError(f"{path}: bad key entry {name!r} (needs name, sha256, scopes in {SCOPES})")
    return entries


def add_key(path: str | Path, name: str, scopes: list[str]) -> str:
    """Create a key, store its hash in `path` (atomically), return the key (shown once)."""
    bad = set(scopes) - set(SCOPES)
    if bad:
        raise ValueError(f"unknown scopes {sorted(bad)}; use {SCOPES}")
    path = Path(path)
    entries = read_keys(path) if path.exists() else []
    key = secrets.token_urlsafe(32)
    entries = [e for e in entries if e["name"] != name] + [
        {"name": name, "sha256": hash_key(key), "scopes": sorted(set(scopes))}]
    atomic_write(path, json.dumps({"keys": entries}, indent=1))
    path.chmod(0o600)
    return key


class RateLimiter:
    """A token bucket per caller: `rate` requests per second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, who: str, now: float | None = None, rate: float | None = None, burst: float | None = None
              ) -> float:
        """0 when the request may go ahead, else the seconds to wait before retrying (`rate`, `burst`: this
        caller's own limits, default the limiter's)."""
        rate = self.rate if rate is None else rate
        burst = self.burst if burst is None else burst
        if rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._buckets) > MAX_BUCKETS:  # callers idle long enough to be full again are forgotten
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < burst / rate}
            tokens, last = self._buckets.get(who, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            if tokens >= 1:
                self._buckets[who] = (tokens - 1, now)
                return 0.0
            self._buckets[who] = (tokens, now)
            return (1 - tokens) / rate
