"""API keys (only their SHA-256 is stored) with read / write scopes, and a per-key rate limit.

Keys file (JSON): {"keys": [{"name": "robot-1", "sha256": "<hex>", "scopes": ["read"]}, ...]}; an entry may
set its own "rate_per_s" and "burst" (else the server's).
Create a key with `python -m vprkit.service.auth KEYS_FILE NAME read,write`: it prints the key once.
Keys are 256-bit random strings, so a plain SHA-256 (no slow hash) cannot be brute-forced.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..data.safeio import InputError, read_text
from ..evaluation.outputs import atomic_write

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
    """The hashed keys of a keys file; `None` path means no keys: every caller has every scope."""

    def __init__(self, path: str | Path | None) -> None:
        self.enabled = path is not None
        self.entries: list[dict] = []
        if path is not None:
            self.entries = read_keys(Path(path))
            for e in self.entries:
                bad = set(e.get("scopes", [])) - set(SCOPES)
                if bad or not e.get("name") or len(e.get("sha256", "")) != 64:
                    raise ValueError(f"{path}: bad key entry {e.get('name')!r} "
                                     f"(needs name, sha256, scopes in {SCOPES})")

    def identify(self, key: str | None, client: str) -> Caller | None:
        """The caller a key belongs to (constant-time compare), None for a missing or unknown key."""
        if not self.enabled:
            return Caller(f"client:{client}", frozenset(SCOPES))
        if not key:
            return None
        digest = hash_key(key)
        found = None
        for e in self.entries:
            if hmac.compare_digest(digest, e["sha256"]):
                found = Caller(e["name"], frozenset(e["scopes"]), e.get("rate_per_s"), e.get("burst"))
        return found


def read_keys(path: Path) -> list[dict]:
    """The entries of a keys file (`{"keys": [{"name", "sha256", "scopes"}, ...]}`); anything else is refused with
    one line naming the file."""
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not a keys file (bad JSON: {exc})") from None
    entries = data.get("keys", []) if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InputError(f'{path}: not a keys file: expected {{"keys": [{{"name": ..., "sha256": ..., "scopes": '
                         f"[...]}}, ...]}}, got a JSON {type(data).__name__}")
    return entries


def add_key(path: str | Path, name: str, scopes: list[str]) -> str:
    """Create a key, store its hash in `path` (atomically), return the key (shown once)."""
    bad = set(scopes) - set(SCOPES)
    if bad:
        raise ValueError(f"unknown scopes {sorted(bad)}; use {SCOPES}")
    path = Path(path)
    data = {"keys": read_keys(path) if path.exists() else []}
    key = secrets.token_urlsafe(32)
    data["keys"] = [e for e in data["keys"] if e.get("name") != name] + [
        {"name": name, "sha256": hash_key(key), "scopes": sorted(set(scopes))}]
    atomic_write(path, json.dumps(data, indent=1))
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


def main() -> None:
    p = argparse.ArgumentParser(description="create an API key for `vprkit serve --keys FILE`")
    p.add_argument("keys_file")
    p.add_argument("name")
    p.add_argument("scopes", help="comma-separated: read, write")
    args = p.parse_args()
    print(add_key(args.keys_file, args.name, args.scopes.split(",")))


if __name__ == "__main__":
    main()
