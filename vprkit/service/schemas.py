"""The service's answers as Pydantic models: they are its OpenAPI response schemas."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Position = list[float]


class Problem(BaseModel):
    """Every refusal: a status code and one line saying why."""

    detail: str | list = Field(description="what was wrong (a list of fields for malformed parameters)")


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    map_size: int
    preset: str
    auth: bool = Field(description="whether a keys file is in use (else a start-up token guards map changes)")


class Match(BaseModel):
    name: str
    score: float = Field(description="cosine similarity (fused with the re-ranker's score when re-ranked)")
    weight: float = Field(description="posterior weight of this candidate (sums to 1 over the candidates)")
    position: Position | None = None


class Estimate(BaseModel):
    name: str
    position: Position | None = None
    confidence: float


class Localized(BaseModel):
    matches: list[Match]
    estimate: Estimate | None
    reranked: bool
    map_size: int


class StreamEstimate(BaseModel):
    name: str
    position: Position | None = None
    confidence: float | None = Field(description="the sequence matcher's confidence (SeqSLAM: margin of the best "
                                                 "route over the best one elsewhere; the window localizer: mean "
                                                 "similarity); null when the map has no place far enough from the "
                                                 "estimate to compare with (a map smaller than SeqSLAM's exclusion "
                                                 "window)")
    score: float | None = Field(deprecated="use `confidence` (the field name of /v1/localize); kept for clients of "
                                    "version 1, to be removed", description="the same number as `confidence`")


class StreamFrame(BaseModel):
    stream: str
    frames: int = Field(description="frames this stream has seen")
    time: float = Field(description="when the server answered this frame (Unix time, seconds)")
    state: Literal["localized", "lost"] = Field(
        description="localized when the estimate's confidence reaches the `stream_min_confidence` setting")
    estimate: StreamEstimate | None = Field(description="the sequence-consistent place so far")
    frame_best: Match | None = Field(description="this frame's own best match")


class StreamSummary(BaseModel):
    stream: str
    frames: int = Field(description="frames this stream has seen")
    idle_s: float = Field(description="seconds since its last frame (it ends after `stream_idle_s`)")
    last: StreamFrame | None = Field(description="its last frame's answer")


class StreamList(BaseModel):
    streams: list[StreamSummary] = Field(description="live streams, most recently fed first")


class StreamHistory(BaseModel):
    stream: str
    frames: int = Field(description="frames this stream has seen")
    history: list[StreamFrame] = Field(description="its last `stream_history` answers, oldest first")


class StreamEnded(BaseModel):
    stream: str
    ended: bool


class MapPoint(BaseModel):
    name: str
    position: Position


class MapInfo(BaseModel):
    size: int
    points: list[MapPoint]
    preset: str


class ImageAdded(BaseModel):
    name: str
    id: int
    position: Position | None
    map_size: int


class ImageRemoved(BaseModel):
    name: str
    removed: bool
    map_size: int


def errors(*codes: int) -> dict:
    """OpenAPI `responses` for the refusals an endpoint can give."""
    return {c: {"model": Problem} for c in codes}
