"""Untrusted request input, bounded before it costs memory: the body (Content-Length first, then bytes counted
while streaming), multipart files, the image formats PIL may open and the pixel count from the header
(decompression bombs). Images are decoded with the training pipeline's conversion (`data.images.convert_image`)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from ..data.images import convert_image
from ..errors import LeanvisionError, first_line
from .schemas import ApiError, ServeConfig

from PIL import Image, UnidentifiedImageError

try:
    from starlette.datastructures import Headers
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.formparsers import MultiPartException
    from starlette.requests import Request as StarletteRequest
except ImportError as e:  # pragma: no cover - exercised by the CLI test that hides the extra
    raise LeanvisionError(f'`leanvision serve` needs its extra ({e.name} is missing). Install it with: '
                          'pip install "leanvision[serve]"') from None

#: File formats PIL may open for a request (those of `data.images.IMAGE_EXTENSIONS`); nothing else is parsed.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")



def decode_image(data: bytes, name: str, size_hw: tuple[int, int], channels: int, max_pixels: int) -> np.ndarray:
    """Decode one untrusted image to uint8 (C, H, W) with the training conversion; `ApiError` 4xx when it is not a
    readable image or has more than `max_pixels` pixels (checked from the header, before decoding)."""
    if not data:
        raise ApiError(422, f"{name} is empty (0 bytes). Send a PNG, JPEG, BMP, GIF or WebP image.", "empty")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ApiError(413, f"{name} is {w}x{h} pixels ({w * h:,}); at most {max_pixels:,} pixels are "
                                    "accepted. Send a smaller image.", "too_many_pixels")
            return convert_image(img, size_hw, channels)
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ApiError(413, f"{name} refused as a decompression bomb ({first_line(e, limit=120)}). "
                            "Send a smaller image.", "too_many_pixels") from None
    except UnidentifiedImageError:
        raise ApiError(422, f"{name} is not an image PIL can read ({len(data):,} bytes). Send a PNG, JPEG, BMP, GIF "
                            "or WebP image.", "not_an_image") from None
    except Exception as e:  # noqa: BLE001 - corrupt data makes PIL's plugins raise many types (OSError, struct.error,
        # IndexError, SyntaxError, ...): all of them mean "not a valid image", a 4xx, never a 5xx
        text = first_line(e, limit=120)
        raise ApiError(422, f"{name} cannot be decoded ({type(e).__name__}: {text}). Send a valid PNG, JPEG, BMP, "
                            "GIF or WebP image.", "not_an_image") from None


async def read_body(headers: Headers, receive: Any, limit: int) -> bytes:
    """The request body (ASGI `receive`), refused with 413 as soon as it is known to exceed `limit` bytes
    (Content-Length first, then the bytes received, so a lying or absent Content-Length cannot make the server hold
    more than `limit`)."""
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, f"Invalid Content-Length {length[:40]!r}: expected a number of bytes.", "bad_request")
        if int(length) > limit:
            raise ApiError(413, f"Request body of {int(length):,} bytes is over the limit of {limit:,} bytes "
                                "(--max-body-kb). Send smaller or fewer images.", "too_large")
    chunks, total = [], 0
    while True:  # as Starlette's `Request.stream()`, without its per-request generator
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise ApiError(413, f"Request body is over the limit of {limit:,} bytes (--max-body-kb). Send "
                                    "smaller or fewer images.", "too_large")
            if not message.get("more_body", False):
                if not chunks:
                    return chunk  # the usual case: the whole body in one message, no copy
                chunks.append(chunk)
                return b"".join(chunks)
            if chunk:
                chunks.append(chunk)
        elif message["type"] == "http.disconnect":  # nobody will read the answer; counted as its own reason
            raise ApiError(400, "The client disconnected before sending the whole body.", "client_gone")



async def image_parts(scope: dict, receive: Any, config: ServeConfig, headers: Headers | None = None
                      ) -> list[tuple[str, bytes]]:
    """(name, bytes) of every image in the request (ASGI `scope` and `receive`): multipart files, or the whole body
    for image/* or application/octet-stream."""
    headers = Headers(scope=scope) if headers is None else headers
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    multipart = ctype == "multipart/form-data"
    if not (multipart or ctype.startswith("image/") or ctype == "application/octet-stream"):
        raise ApiError(415, f"Content-Type {ctype or '(none)'!r} is not accepted. Send multipart/form-data files, "
                            "or one image as image/png, image/jpeg, ... or application/octet-stream.",
                       "bad_content_type")
    body = await read_body(headers, receive, config.max_body_kb * 1024)
    if not multipart:
        return [("body", body)]
    sent = False

    async def replay() -> dict[str, Any]:  # the body, already bounded, handed to Starlette's multipart parser
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await StarletteRequest(scope, replay).form(max_files=config.max_files, max_fields=100)
    except (StarletteHTTPException, MultiPartException, ValueError, KeyError, AssertionError) as e:  # malformed
        # multipart (Starlette raises MultiPartException, or HTTPException 400 when scope["app"] is set)
        detail = getattr(e, "detail", None) or str(e) or type(e).__name__
        if "too many files" in str(detail).lower():
            raise ApiError(413, f"Too many files in one request; at most {config.max_files} are accepted. Split "
                                "the request.", "too_many_files") from None
        raise ApiError(400, f"Malformed multipart body ({' '.join(str(detail).split())[:120]}). Send files as "
                            "multipart/form-data, e.g. curl -F files=@image.png.", "bad_request") from None
    try:
        parts = []
        for _, value in form.multi_items():
            if not isinstance(value, str):  # the client's file name, echoed in answers: one line, bounded
                name = " ".join((value.filename or "").split())[:100] or f"file {len(parts) + 1}"
                parts.append((name, await value.read()))
    finally:
        await form.close()
    if not parts:
        raise ApiError(422, "The multipart body holds no file. Send one or more image files, e.g. curl -F "
                            "files=@image.png.", "no_file")
    return parts
