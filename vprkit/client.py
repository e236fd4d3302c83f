"""A small Python client of `vprkit serve` (needs httpx: the `serve` extra).

    from vprkit.client import Client
    c = Client("http://127.0.0.1:8000", key="...")  # a key, or the token `vprkit serve` printed at start
    c.localize("photo.jpg")["estimate"]
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import httpx


class ServiceError(RuntimeError):
    """An error answer of the service: its status code and message."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8000", key: str | None = None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kw) -> dict:
        r = self.http.request(method, path, **kw)
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
        """Feed one frame of a stream; the sequence-consistent estimate."""
        return self._call("POST", f"/v1/streams/{quote(stream, safe='')}/frames", files=self._files(image))

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
