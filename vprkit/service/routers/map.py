"""`/v1/map`: the map's points, thumbnails of its images, and changing it (the write scope)."""

from __future__ import annotations

import asyncio
import errno
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query
from fastapi.responses import Response

from ...data.images import ImageError
from ...index.growing import check_name
from ...index.journal import JournalUnavailable
from ..deps import RAW_IMAGE, ImageBytes, Reader, Svc, Writer, floats
from ..schemas import ImageAdded, ImageRemoved, MapInfo, errors

router = APIRouter(tags=["map"])
DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


@router.get("/v1/map", dependencies=[Reader], responses=errors(401, 403, 429))
async def map_info(svc: Svc) -> MapInfo:
    """Map size and the positions of up to `map_points_max` images (for the page's map)."""
    size, points = await asyncio.to_thread(svc.live_points)
    return MapInfo(size=size, points=points, preset=svc.ext.conf["preset"])


@router.get("/v1/map/images/{name:path}/thumbnail", dependencies=[Reader], response_class=Response, responses={
    200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}, "description": "JPEG"},
    **errors(401, 403, 404, 429)})
async def thumbnail(name: str, svc: Svc) -> Response:
    """A JPEG thumbnail (`thumb_px` on its long side) of a live map image."""
    name = svc.known(name)
    try:
        data = await asyncio.to_thread(svc.thumbnail, name)
    except ImageError as exc:
        raise HTTPException(404, f"map image {name} is not readable here ({exc})") from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=60"})


@router.post("/v1/map/images", status_code=201, dependencies=[Writer], openapi_extra=RAW_IMAGE,
             responses=errors(401, 403, 408, 413, 415, 422, 429, 503, 504))
async def add_image(svc: Svc, data: ImageBytes,
                    name: Annotated[str | None, Form(description="the image's name in the map")] = None,
                    position: Annotated[str | None, Form(description="x,y in map units")] = None,
                    query_name: Annotated[str | None, Query(alias="name", description="the name, when the body "
                                                                                      "is the raw image")] = None,
                    query_position: Annotated[str | None, Query(alias="position")] = None) -> ImageAdded:
    """Add one image to the map (an existing name is replaced). Durable when acknowledged (journaled and
    fsynced); 503 while the map cannot be written (disk full)."""
    try:
        name = check_name(name or query_name or "")
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    pos = floats(position or query_position, 2, "position (x,y)")
    _, desc = await svc.describe(data)
    i = await _write(svc.writer.add, name, desc, data, pos)
    svc.forget_thumbnail(name)  # a replaced image
    svc.metrics.map_size.set(len(svc.map.ids))
    return ImageAdded(name=name, id=i, position=pos, map_size=len(svc.map.ids))


@router.delete("/v1/map/images/{name:path}", dependencies=[Writer], responses=errors(401, 403, 404, 429, 503))
async def remove_image(name: str, svc: Svc) -> ImageRemoved:
    """Remove a map image (durable when answered)."""
    name = svc.known(name)
    if not await _write(svc.writer.remove, name):  # removed by another request meanwhile
        raise HTTPException(404, f"no map image named {name[:300]!r}")
    svc.forget_thumbnail(name)
    svc.metrics.map_size.set(len(svc.map.ids))
    return ImageRemoved(name=name, removed=True, map_size=len(svc.map.ids))


async def _write(change, *args):
    """A map writer call in a worker thread: 503 while its journal or the disk cannot take it (nothing is
    acknowledged then), 422 for what the writer refuses."""
    try:
        return await asyncio.to_thread(change, *args)
    except JournalUnavailable as exc:
        raise HTTPException(503, f"the map cannot be changed now: {exc}", headers={"Retry-After": "60"}) from None
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        raise HTTPException(503, f"the map cannot be changed now: {exc.strerror} (free space on the server's disk)",
                            headers={"Retry-After": "60"}) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
