"""Downloads with an md5 check and an atomic rename; `LEANVISION_OFFLINE=1` turns every download off.

A download either leaves the complete, verified file at its destination or nothing at all (the partial file is
written next to it under a temporary name and removed on failure).
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from ..errors import DownloadError, first_line
from ..io import temp_file

#: Seconds to wait for a server (connect and each read).
TIMEOUT_S = 15
_BLOCK = 1 << 20


def offline() -> bool:
    """True when `$LEANVISION_OFFLINE` is set to 1/true/yes."""
    return os.environ.get("LEANVISION_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def md5_file(path: str | os.PathLike) -> str:
    """Hex md5 of a file, read in 1 MiB blocks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, dest: Path, md5: str | None) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(dest, suffix=".part")  # normal permissions (umask), not mkstemp's owner-only
    try:
        digest = hashlib.md5(usedforsecurity=False)
        request = urllib.request.Request(url, headers={"User-Agent": "leanvision"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            for block in iter(lambda: response.read(_BLOCK), b""):
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if md5 is not None and digest.hexdigest() != md5:
            raise DownloadError(f"md5 mismatch for {url}: got {digest.hexdigest()}, expected {md5}")
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def download(urls: Sequence[str], dest: str | os.PathLike, md5: str | None = None) -> Path:
    """Fetch the first of `urls` (mirrors of one file) that succeeds and matches `md5` into `dest`, atomically.

    Raises:
        DownloadError: Offline mode, or every mirror failed (the message gives the last reason).
    """
    dest = Path(dest)
    if offline():
        raise DownloadError("LEANVISION_OFFLINE=1 is set")
    reasons = []
    for url in urls:
        try:
            _fetch(url, dest, md5)
            return dest
        except DownloadError as e:
            reasons.append(str(e))
        except Exception as e:  # network, HTTP, disk: try the next mirror
            reasons.append(f"{url}: {first_line(e, with_type=True)}")
    raise DownloadError("; ".join(reasons)[:400])
