"""Helpers shared by the serve tests (image bytes, decompression bombs)."""

import io
import zlib

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray, mode: str | None = None, size: tuple[int, int] | None = None, fmt: str = "PNG"
              ) -> bytes:
    img = Image.fromarray(np.asarray(array, dtype=np.uint8))
    if size is not None:
        img = img.resize(size)
    if mode is not None:
        img = img.convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of `width` x `height` black pixels: a few kB that decode to width*height bytes or more."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])  # 1-bit grayscale
    row = b"\x00" * (1 + (width + 7) // 8)
    compressor, parts = zlib.compressobj(9), []
    block = row * 256
    for _ in range(height // 256):
        parts.append(compressor.compress(block))
    parts.append(compressor.compress(row * (height % 256)))
    parts.append(compressor.flush())
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
