"""The service's answers as Pydantic models: they are its OpenAPI response schemas."""

from __future__ import annotations

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
    score: float


class StreamFrame(BaseModel):
    stream: str
    frames: int = Field(description="frames this stream has seen")
    estimate: StreamEstimate | None = Field(description="the sequence-consistent place so far")
    frame_best: Match | None = Field(description="this frame's own best match")


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
