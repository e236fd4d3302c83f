"""A small Python client of `vprkit serve` (needs httpx: the `serve` extra).

    from vprkit.client import Client
    c = Client("http://127.0.0.1:8000", key="...")  # a key, or the token `vprkit serve` printed at start
    c.localize("photo.jpg")["estimate"]
    for answer in replay(c, "frames/", "robot-1", fps=10):  # a folder of frames, sent as a robot would
        print(answer["state"], answer["estimate"])

A request refused for its rate (429) is sent again after the server's `Retry-After`, up to `retries` times.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import quote

import httpx

from .data.images import list_images


class ServiceError(RuntimeError):
    """An error answer of the service: its status code and message."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


def retry_after(value: str | None, default: float = 1.0) -> float:
    """Seconds to wait from a `Retry-After` header: delay-seconds or an HTTP date (RFC 9110); `default` when
    absent or unreadable."""
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return default


class Client:
    """`retries`: how many times a request refused with 429 is sent again, each after its `Retry-After`
    (at most `max_wait_s`); `sleep` is swappable for tests. `waited_s` and `retried` count what that cost."""

    def __init__(self, url: str = "http://127.0.0.1:8000", key: str | None = None, timeout: float = 60.0,
                 retries: int = 10, max_wait_s: float = 60.0, sleep: Callable[[float], None] = time.sleep) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)
        self.retries, self.max_wait_s, self.sleep = retries, max_wait_s, sleep
        self.waited_s, self.retried = 0.0, 0

    def _call(self, method: str, path: str, **kw) -> dict:
        for attempt in range(self.retries + 1):
            r = self.http.request(method, path, **kw)
            if r.status_code != 429 or attempt == self.retries:
                break
            wait = min(retry_after(r.headers.get("Retry-After")), self.max_wait_s)
            self.sleep(wait)
            self.waited_s, self.retried = self.waited_s + wait, self.retried + 1
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise ServiceError(r.status_code, str(detail))
        return r.json()

    @staticmethod
    def _files(image: str | Path | bytes) -> dict:
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        return {"image": ("image", data, "application/octet-stream")}

    def localize(self, image: str | Path | bytes, top_k: int = 5, rerank: str | None = None,
                 prior: tuple[float, float, float] | None = None) -> dict:
        """Top-k matches and the position estimate of one image (a path or its bytes)."""
        params = {"top_k": top_k, "rerank": rerank or "none"}
        if prior is not None:
            params["prior"] = ",".join(map(str, prior))
        return self._call("POST", "/v1/localize", params=params, files=self._files(image))

    def frame(self, stream: str, image: str | Path | bytes) -> dict:
        """Feed one frame of a stream; the sequence-consistent estimate, its confidence, localized / lost."""
        return self._call("POST", f"/v1/streams/{quote(stream, safe='')}/frames", files=self._files(image))

    def streams(self) -> list[dict]:
        """The live streams, most recently fed first."""
        return self._call("GET", "/v1/streams")["streams"]

    def history(self, stream: str) -> dict:
        """A live stream's last answers (`history`, oldest first)."""
        return self._call("GET", f"/v1/streams/{quote(stream, safe='')}")

    def add(self, name: str, image: str | Path | bytes, position: tuple[float, float] | None = None) -> dict:
        """Add (or replace) a map image; durable when this returns."""
        data = {"name": name}
        if position is not None:
            data["position"] = f"{position[0]},{position[1]}"
        return self._call("POST", "/v1/map/images", data=data, files=self._files(image))

    def remove(self, name: str) -> dict:
        return self._call("DELETE", f"/v1/map/images/{quote(name, safe='/')}")  # any name: spaces, '#', unicode

    def map(self) -> dict:
        return self._call("GET", "/v1/map")

    def ready(self) -> dict:
        return self._call("GET", "/readyz")

    def close(self) -> None:
        self.http.close()


def replay(client: Client, folder: str | Path, stream: str, fps: float = 10.0, limit: int | None = None,
           start: int = 0, clock: Callable[[], float] = time.monotonic) -> Iterator[tuple[str, dict]]:
    """Send the images of `folder` (sorted by name, from the `start`-th, at most `limit`) as one stream's frames,
    `fps` per second as a camera would: each frame 1/fps after the previous one was sent, or at once when its
    answer (a 429's wait included) took longer: late frames are not sent in a burst. `fps` 0: as fast as the
    server answers. Yields (image name, answer) per frame."""
    names = list_images(folder)[start:]
    due = clock()
    for name in names[:limit] if limit is not None else names:
        if fps > 0:
            client.sleep(max(0.0, due - clock()))
            due = clock() + 1.0 / fps
        yield name, client.frame(stream, Path(folder) / name)
