"""What stands between a raw file and a decoder: verified reads, a memory budget, safe failure messages.

Three mechanisms every reader uses at its sample boundary (`readers.base.ReaderContext` and the
readers call them; `imaging` and `volumes` call the budget before they allocate):

- `read_verified` / `open_verified`: a file is opened beneath the dataset folder one path
  component at a time with `O_NOFOLLOW` (a file or folder swapped for a symlink after the scan is
  refused, not followed), must still be a regular file (`O_NONBLOCK`: a pipe cannot hang the read),
  and its bytes must have the MD5 the source scan recorded (`content_changed` otherwise). The
  decoder then reads those verified bytes (or that descriptor), never the path again.
- `DecodeBudget`: before anything is decoded, its declared size (pixels x bytes per pixel from the
  header; volume voxels x the working bytes per voxel) is checked against the budget and reserved
  from it, so an image or volume that declares more than the budget is quarantined `too_large`
  before a byte is allocated, and images decoded on several threads at once share one budget
  (a thread waits for room). The budget is `GMAI_DECODE_BUDGET_MB` (default 2048 MiB).
- `decoder_failure`: any exception a decoder raises (Pillow, pydicom, nibabel, SimpleITK, numpy)
  becomes an `ImageError` whose detail names the file and the exception type, and never the
  exception's own text: decoders quote header values (a DICOM PatientName, a path in a header).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from gmai_pipeline.quarantine import Reason


class ImageError(Exception):
    """An input that cannot become an image; `reason` is a quarantine code (re-exported by `imaging`)."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


DEFAULT_BUDGET_MB = 2048
CHUNK = 1 << 20
_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


def budget_bytes() -> int:
    """`GMAI_DECODE_BUDGET_MB` in bytes (the most one input may decode to; images in flight share it)."""
    value = os.environ.get("GMAI_DECODE_BUDGET_MB", "").strip()
    try:
        mb = float(value) if value else DEFAULT_BUDGET_MB
    except ValueError:
        raise ValueError(f"GMAI_DECODE_BUDGET_MB={value!r} is not a number of MiB") from None
    if mb <= 0:
        raise ValueError(f"GMAI_DECODE_BUDGET_MB={value!r} must be positive")
    return int(mb * 1024 * 1024)


def _mib(n: float) -> str:
    return f"{n / (1024 * 1024):,.0f} MiB"


class DecodeBudget:
    """Bytes that decodes in flight may hold together; `reserve` blocks until there is room."""

    def __init__(self, limit: int | None = None):
        self.limit = limit if limit is not None else budget_bytes()
        self.used = 0
        self._cond = threading.Condition()

    def check(self, nbytes: int, name: str, what: str) -> None:
        """ImageError `too_large` when `nbytes` alone exceeds the whole budget."""
        if nbytes > self.limit:
            raise ImageError(
                Reason.TOO_LARGE,
                f"{name}: {what} would need {_mib(nbytes)} decoded, over the decode budget of "
                f"{_mib(self.limit)} (GMAI_DECODE_BUDGET_MB)",
            )

    @contextlib.contextmanager
    def reserve(self, nbytes: int, name: str, what: str) -> Iterator[None]:
        self.check(nbytes, name, what)
        with self._cond:
            self._cond.wait_for(lambda: self.used == 0 or self.used + nbytes <= self.limit)
            self.used += nbytes
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()


# ------------------------------------------------------------------ verified reads


def _open_beneath(root: Path, rel: str) -> int:
    """A descriptor of the regular file `root/rel`, no symlink followed at any level."""
    fd = os.open(root, _FLAGS | os.O_DIRECTORY)
    try:
        parts = rel.split("/")
        for part in parts[:-1]:
            nfd = os.open(part, _FLAGS | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        leaf = os.open(parts[-1], _FLAGS | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)
    try:
        if not stat.S_ISREG(os.fstat(leaf).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.set_blocking(leaf, True)
    except BaseException:
        os.close(leaf)
        raise
    return leaf


def _open_error(exc: OSError, name: str) -> ImageError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return ImageError(
            Reason.PATH_REFUSED, f"{name}: became a symbolic link after the source scan; not followed"
        )
    if exc.errno == errno.EINVAL:
        return ImageError(Reason.PATH_REFUSED, f"{name}: no longer a regular file; not read")
    if exc.errno == errno.ENOENT:
        return ImageError(Reason.MISSING_FILE, f"{name}: gone since the source scan")
    if exc.errno == errno.ENAMETOOLONG:
        return ImageError(Reason.NAME_TOO_LONG, f"{name}: the path is longer than the filesystem allows")
    return ImageError(Reason.UNREADABLE, f"{name}: cannot read ({exc.strerror or type(exc).__name__})")


def _changed(name: str) -> ImageError:
    return ImageError(
        Reason.CONTENT_CHANGED,
        f"{name}: bytes differ from the MD5 the source scan recorded; re-materialize its source asset",
    )


def _descriptor(root: Path, real: str, name: str) -> int:
    try:
        return _open_beneath(root, real)
    except OSError as exc:
        raise _open_error(exc, name) from None


def read_verified(root: Path, real: str, name: str, md5: str | None) -> bytes:
    """The bytes of `root/real` (shown as `name`), checked against `md5` (None: not checked)."""
    fd = _descriptor(root, real, name)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read()
    except OSError as exc:
        raise _open_error(exc, name) from None
    finally:
        os.close(fd)
    if md5 is not None and hashlib.md5(data, usedforsecurity=False).hexdigest() != md5:
        raise _changed(name)
    return data


@contextlib.contextmanager
def open_verified(root: Path, real: str, name: str, md5: str | None) -> Iterator[io.BufferedReader]:
    """A binary file object of `root/real`, hashed first (one streaming pass), rewound, then handed over."""
    fd = _descriptor(root, real, name)
    f = os.fdopen(fd, "rb")
    try:
        if md5 is not None:
            h = hashlib.md5(usedforsecurity=False)
            while chunk := f.read(CHUNK):
                h.update(chunk)
            if h.hexdigest() != md5:
                raise _changed(name)
            f.seek(0)
        yield f
    finally:
        f.close()


# ------------------------------------------------------------------ failures

# Errors of the output side: the run stops (fails loudly) instead of blaming the input.
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def is_output_failure(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in OUTPUT_ERRNOS


_CODEC = re.compile(r"decoder (\w+) not available")


def decoder_failure(exc: BaseException, name: str, what: str = "file") -> ImageError:
    """Any decoder exception as an ImageError naming the file and the exception type, never its text."""
    if isinstance(exc, ImageError):
        return exc
    msg = str(exc).lower()
    kind = type(exc).__name__
    if isinstance(exc, MemoryError) or type(exc).__name__ == "DecompressionBombError":
        return ImageError(Reason.TOO_LARGE, f"{name}: {what} does not fit in memory ({kind})")
    if isinstance(exc, EOFError) or any(k in msg for k in ("truncat", "premature end", "end of file", "eof")):
        return ImageError(Reason.TRUNCATED, f"{name}: truncated {what} ({kind})")
    m = _CODEC.search(str(exc))
    if m or ("decoder" in msg and "not available" in msg):
        codec = f" {m.group(1)}" if m else ""
        return ImageError(
            Reason.UNSUPPORTED_CODEC, f"{name}: no{codec} decoder installed for this {what} ({kind})"
        )
    return ImageError(Reason.UNREADABLE, f"{name}: {what} cannot be decoded ({kind})")
