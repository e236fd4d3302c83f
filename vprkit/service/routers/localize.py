"""`POST /v1/localize`: one image -> the top-k map images and a position estimate."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends

from ..deps import RAW_IMAGE, ImageBytes, Reader, Svc, localize_options
from ..schemas import Localized, errors

router = APIRouter(tags=["localize"])


@router.post("/v1/localize", dependencies=[Reader], responses=errors(401, 403, 408, 413, 415, 422, 429, 504),
             openapi_extra=RAW_IMAGE)
async def localize(svc: Svc, data: ImageBytes,
                   options: Annotated[tuple, Depends(localize_options)]) -> Localized:
    """One image -> top-k map images (names, scores, positions), a position estimate and a confidence.

    Multipart field `image` or the raw image bytes; options as query parameters (or form fields):
    `top_k`, `rerank=chamfer`, `prior=x,y,sigma` (a Gaussian position prior, map units)."""
    top_k, rerank, prior = options
    img, desc = await svc.describe(data)
    return await asyncio.to_thread(svc.localize, img, desc, top_k, rerank, prior)
