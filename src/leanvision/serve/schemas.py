"""The server's limits (`ServeConfig`), the HTTP API's error type (`ApiError`, answered as one JSON line) and its
response schemas (pydantic models: the documentation and the fuzz test's oracle; responses are serialized
directly)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import LeanvisionError

try:
    from pydantic import BaseModel, ConfigDict, Field
except ImportError as e:  # pragma: no cover - exercised by the CLI test that hides the extra
    raise LeanvisionError(f'`leanvision serve` needs its extra ({e.name} is missing). Install it with: '
                          'pip install "leanvision[serve]"') from None


@dataclass(frozen=True)
class ServeConfig:
    runtime: str = "onnxruntime"  # inference runtime (leanvision.runtimes.RUNTIMES)
    max_batch_size: int = 64  # images per runtime call at most
    max_wait_ms: float = 2.0  # a queued image waits at most this long for others
    max_body_kb: int = 2048  # request bodies above this are refused with 413
    max_concurrency: int = 256  # /predict requests in progress at once; more get 503
    max_pixels: int = 16_000_000  # width x height of one image at most (decompression bomb guard)
    max_files: int = 64  # images in one request at most
    top_k: int = 1  # predictions per image when the request does not say

    def check(self) -> ServeConfig:
        for name in ("max_batch_size", "max_body_kb", "max_concurrency", "max_pixels", "max_files", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LeanvisionError(f"Invalid {name}={value!r}. Expected an integer >= 1.")
        if not isinstance(self.max_wait_ms, (int, float)) or not 0 <= self.max_wait_ms <= 10_000:
            raise LeanvisionError(f"Invalid max_wait_ms={self.max_wait_ms!r}. Expected a number of milliseconds "
                                  "from 0 to 10000.")
        return self


class ApiError(Exception):
    """An error answered as `{"error": "<one line>"}` with `status`."""

    def __init__(self, status: int, message: str, reason: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, headers or {}


# ---- response schemas (documentation and the fuzz test's oracle; responses are serialized directly) ----

class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong, in one line")


class Prediction(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class")
    probability: float


class ImageResult(BaseModel):
    file: str = Field(description="the multipart file name, or 'body' for a raw image body")
    predictions: list[Prediction]
    batch_size: int = Field(description="images in the runtime call that computed this one")
    model_ms: float = Field(description="wall time of that runtime call, ms")
    queue_ms: float = Field(description="time this image waited for its batch, ms")


class PredictResponse(BaseModel):
    results: list[ImageResult]
    server_ms: float = Field(description="time in the server from the request's start to the response, ms")
    runtime: str
    precision: str


class ModelCard(BaseModel):
    name: str
    run: str
    dataset: str | None
    classes: list[str]
    input_shape: list[int]
    params: int
    macs: int | None
    file: str
    file_bytes: int
    runtime: str
    precision: str
    providers: list[str]
    threads: int
    accuracy: float | None
    accuracy_images: int | None
    techniques: list[str]
    study_report: str | None
    max_batch_size: int
    max_wait_ms: float
    max_body_bytes: int
    max_files: int
    top_k: int


class Health(BaseModel):
    status: str


ERRORS = {code: {"model": ErrorBody, "description": text} for code, text in (
    (400, "malformed request"), (413, "body or image too large"), (415, "unsupported content type"),
    (422, "not an image, empty, or invalid parameters"), (503, "overloaded or not ready; retry later"),
    (500, "the model failed on this image"))}
