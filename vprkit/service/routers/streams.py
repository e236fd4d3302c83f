"""`/v1/streams`: frames of a camera stream -> the sequence-consistent place; the live streams, their recent
history, and their answers pushed as they come (Server-Sent Events, for the page's live view)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import StreamingResponse

from ..deps import RAW_IMAGE, STREAM_ID, ImageBytes, Reader, Svc
from ..schemas import StreamEnded, StreamFrame, StreamHistory, StreamList, StreamSummary, errors

router = APIRouter(tags=["streams"], dependencies=[Reader])
StreamId = Annotated[str, Path(pattern=STREAM_ID, description="1-64 letters, digits, '_', '-', '.'")]
KEEP_ALIVE_S = 15.0  # a comment line this often: proxies keep the connection, a gone watcher is noticed
POLL_S = 0.5  # how soon an event stream ends once the server stops
SSE = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": (
    "Server-Sent Events: first `event: history` (data: the StreamHistory), then one `event: frame` per frame "
    "(data: a StreamFrame), and a comment line every 15 s")}}


@router.post("/v1/streams/{stream_id}/frames", responses=errors(401, 403, 408, 413, 415, 422, 429, 504),
             openapi_extra=RAW_IMAGE)
async def stream_frame(stream_id: StreamId, svc: Svc, data: ImageBytes) -> StreamFrame:
    """One frame of a stream (e.g. a robot's camera) -> the sequence-consistent estimate so far, its confidence
    and the stream's state (localized / lost); pushed to the stream's watchers."""
    _, desc = await svc.describe(data)
    frame = StreamFrame.model_validate(await asyncio.to_thread(svc.stream_frame, stream_id, desc))
    svc.feeds.publish(stream_id, frame.model_dump_json())
    return frame


@router.get("/v1/streams", responses=errors(401, 403, 429))
async def streams(svc: Svc) -> StreamList:
    """The live streams (most recently fed first), each with its last answer."""
    return StreamList(streams=[StreamSummary.model_validate(s) for s in svc.streams.summary()])


@router.get("/v1/streams/{stream_id}", responses=errors(401, 403, 404, 422, 429))
async def stream_history(stream_id: StreamId, svc: Svc) -> StreamHistory:
    """A live stream's last `stream_history` answers (its track), oldest first."""
    return _history(svc, stream_id, missing_ok=False)


@router.get("/v1/streams/{stream_id}/events", response_class=StreamingResponse,
            responses={**SSE, **errors(401, 403, 422, 429)})
async def stream_events(stream_id: StreamId, svc: Svc, request: Request) -> StreamingResponse:
    """Follow a stream as its frames come (it need not exist yet): its history, then each answer as it is made.
    The page's live view reads this with `fetch` (so the key goes in a header, as everywhere)."""
    return StreamingResponse(_events(svc, stream_id, request), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.delete("/v1/streams/{stream_id}", responses=errors(401, 403, 404, 422, 429))
async def stream_end(stream_id: StreamId, svc: Svc) -> StreamEnded:
    """End a stream (else it ends after `stream_idle_s` without frames)."""
    if not svc.streams.drop(stream_id):
        raise HTTPException(404, "no such stream")
    return StreamEnded(stream=stream_id, ended=True)


def _history(svc, stream_id: str, missing_ok: bool) -> StreamHistory:
    past = svc.streams.history(stream_id)
    if past is None and not missing_ok:
        raise HTTPException(404, "no such stream")
    past = past or []
    return StreamHistory(stream=stream_id, frames=past[-1]["frames"] if past else 0, history=past)


async def _events(svc, stream_id: str, request: Request) -> AsyncIterator[str]:
    """The SSE body: watch first, then send the history (a frame answered in between may come twice: the
    `frames` count tells), then each published answer; ends when the watcher leaves or the server stops."""
    q = svc.feeds.subscribe(stream_id)
    try:
        yield f"retry: 2000\nevent: history\ndata: {_history(svc, stream_id, missing_ok=True).model_dump_json()}\n\n"
        quiet = 0.0
        while not svc.stopping() and not await request.is_disconnected():
            try:
                yield f"event: frame\ndata: {await asyncio.wait_for(q.get(), POLL_S)}\n\n"
                quiet = 0.0
            except TimeoutError:
                quiet += POLL_S
                if quiet >= KEEP_ALIVE_S:
                    yield ": keep-alive\n\n"
                    quiet = 0.0
    finally:
        svc.feeds.unsubscribe(stream_id, q)
