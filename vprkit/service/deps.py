"""Dependencies of the routers: the service, the caller (bearer key with scopes, rate limit), the uploaded
image and the parsed options. FastAPI resolves them per request and documents them in the OpenAPI."""

from __future__ import annotations

import math
import re
from typing import Annotated

from fastapi import Depends, File, Form, HTTPException, Query, Request, Security, UploadFile
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes

from .auth import Caller
from .state import Service

IMAGE_TYPES = {"image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff", "image/gif",
               "application/octet-stream"}
STREAM_ID = r"^[A-Za-z0-9_.-]{1,64}$"
MAX_COORDINATE = 1e12  # positions and priors beyond this are typos (and overflow the prior's Gaussian)
bearer = HTTPBearer(auto_error=False, description="an API key (`vprkit keys add`), or the token printed at start")
api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="the same key, for clients that cannot "
                       "send an Authorization header")
RAW_IMAGE = {"requestBody": {"content": {t: {"schema": {"type": "string", "format": "binary"}}
                                         for t in sorted(IMAGE_TYPES)}}}  # the body alternative to multipart


async def service(request: Request) -> Service:
    return request.app.state.svc


Svc = Annotated[Service, Depends(service)]


async def caller(scopes: SecurityScopes, request: Request, svc: Svc,
                 cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
                 header_key: Annotated[str | None, Depends(api_key)]) -> Caller:
    """The caller with the route's scopes (401 / 403), within its rate (429)."""
    key = cred.credentials if cred else header_key
    who = svc.keys.identify(key, request.client.host if request.client else "?")
    if who is None:
        raise HTTPException(401, "missing or unknown API key (Authorization: Bearer KEY)",
                            headers={"WWW-Authenticate": "Bearer"})
    lacking = [s for s in scopes.scopes if s not in who.scopes]
    if lacking and who.name.startswith("client:"):  # no key, keys off: reads only
        raise HTTPException(401, f"the '{lacking[0]}' scope needs a credential: the token printed at start "
                                 "(Authorization: Bearer TOKEN)", headers={"WWW-Authenticate": "Bearer"})
    if lacking:
        raise HTTPException(403, f"this key lacks the '{lacking[0]}' scope")
    wait = svc.limiter.allow(who.name, rate=who.rate, burst=who.burst)
    if wait > 0:
        raise HTTPException(429, "rate limit exceeded", headers={"Retry-After": str(math.ceil(wait))})
    return who


Reader = Security(caller, scopes=["read"])
Writer = Security(caller, scopes=["write"])


async def image_bytes(request: Request, image: Annotated[UploadFile | None, File(
        description="the image (or send its bytes as the body with an image/* content type)")] = None) -> bytes:
    """The multipart field `image`, or the raw body with an image content type (415 otherwise)."""
    if image is not None:
        return await image.read()
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in IMAGE_TYPES:
        return await request.body()
    if ctype == "multipart/form-data":
        raise HTTPException(422, "multipart request without a file field 'image'")
    raise HTTPException(415, f"content type {ctype or '(none)'!r} not accepted: send multipart/form-data with "
                             "an 'image' file, or the image bytes as image/* or application/octet-stream")


ImageBytes = Annotated[bytes, Depends(image_bytes)]


def floats(text: str | None, n: int, what: str) -> list[float] | None:
    """'x,y,...' -> n finite numbers of at most MAX_COORDINATE in size (422 otherwise); None for no text."""
    if not text:
        return None
    try:
        vals = [float(v) for v in re.split(r"[,;]", text)]
    except ValueError:
        vals = []
    if len(vals) != n or not all(math.isfinite(v) and abs(v) <= MAX_COORDINATE for v in vals):
        raise HTTPException(422, f"{what} must be {n} comma-separated numbers of size at most {MAX_COORDINATE:g}, "
                                 f"got {text[:50]!r}")
    return vals


async def localize_options(svc: Svc,
                           top_k: Annotated[int | None, Query(description="matches to return (default: the server's "
                                                                          "top_k setting)")] = None,
                           rerank: Annotated[str, Query(pattern="^(none|chamfer)$",
                                                        description="'chamfer': training-free re-ranking")] = "none",
                           prior: Annotated[str | None, Query(description="x,y,sigma: a Gaussian position prior "
                                                                          "(map units)")] = None,
                           form_top_k: Annotated[int | None, Form(alias="top_k")] = None,
                           form_rerank: Annotated[str | None, Form(alias="rerank")] = None,
                           form_prior: Annotated[str | None, Form(alias="prior")] = None,
                           ) -> tuple[int, bool, tuple[float, float, float] | None]:
    """(top_k, re-rank?, prior) from the query string or, as before, the same names as form fields."""
    top_k = form_top_k if form_top_k is not None else svc.s["top_k"] if top_k is None else top_k
    if not 1 <= top_k <= svc.s["max_top_k"]:
        raise HTTPException(422, f"top_k must be in 1..{svc.s['max_top_k']}")
    rerank = form_rerank or rerank
    if rerank not in ("none", "chamfer"):
        raise HTTPException(422, f"rerank must be 'none' or 'chamfer', got {rerank[:30]!r}")
    vals = floats(form_prior or prior, 3, "prior (x,y,sigma)")
    if vals is not None and vals[2] <= 0:
        raise HTTPException(422, "prior sigma must be positive")
    return top_k, rerank == "chamfer", None if vals is None else tuple(vals)
