"""`/v1/streams/{id}`: frames of a camera stream -> the sequence-consistent place."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path

from ..deps import RAW_IMAGE, STREAM_ID, ImageBytes, Reader, Svc
from ..schemas import StreamEnded, StreamFrame, errors

router = APIRouter(tags=["streams"], dependencies=[Reader])
StreamId = Annotated[str, Path(pattern=STREAM_ID, description="1-64 letters, digits, '_', '-', '.'")]


@router.post("/v1/streams/{stream_id}/frames", responses=errors(401, 403, 408, 413, 415, 422, 429, 504),
             openapi_extra=RAW_IMAGE)
async def stream_frame(stream_id: StreamId, svc: Svc, data: ImageBytes) -> StreamFrame:
    """One frame of a stream (e.g. a robot's camera) -> the sequence-consistent estimate so far."""
    _, desc = await svc.describe(data)
    return await asyncio.to_thread(svc.stream_frame, stream_id, desc)


@router.delete("/v1/streams/{stream_id}", responses=errors(401, 403, 404, 422, 429))
async def stream_end(stream_id: StreamId, svc: Svc) -> StreamEnded:
    """End a stream (else it ends after `stream_idle_s` without frames)."""
    if not svc.streams.drop(stream_id):
        raise HTTPException(404, "no such stream")
    return StreamEnded(stream=stream_id, ended=True)
