"""Scan a raw dataset folder into a manifest: relative path, size, MD5 of the bytes.

The manifest is what later steps trust as "the inputs": its fingerprint drives the new-data
sensor, and its row count is the left side of inputs = kept + quarantined.

What the scan reads, and what it lists instead (a row with `refused` set, never silently left out):
- Only regular files are opened, and only after `lstat` says so; the open itself uses
  `O_NOFOLLOW | O_NONBLOCK`, so a file swapped for a link or a named pipe in between is refused
  rather than followed or waited on forever. Named pipes, sockets and devices are listed as
  not regular files.
- Symlinks are never followed. A link to a file that the scan also reaches directly (and a second
  hard link to the same inode) is an alias: listed, not an input, so one file is not counted twice.
  Any other link, and a folder that cannot be listed or a file that cannot be read, is refused:
  an input that normalization quarantines as `path_refused`.
- Hidden entries (a name starting with "."): listed, not inputs (normalization lists them with the
  ignored files).
- File names as the filesystem gives them: bytes. A name that is not UTF-8 is kept, shown with its
  bad bytes escaped (`caf\\xe9.png`), and read through its real bytes (`Entry.real`).
- A dataset can ask for shown names (`shown`): the DICOM reader's masking of identifying folder
  and file names (`readers.dicom.manifest_namer`), so patient names in folders never reach the
  manifest or the source asset's metadata. Normalization walks the folder again and matches each
  real file to its shown name (`resolve`); the real names stay in memory. A shown name that
  depends on the file's MD5 (`file-<MD5>.dcm`) is matched when the file is first hashed for
  another reason (its verified read, or its name in a message: `PendingNames`), so each file is
  read and hashed once per normalization, not once to be matched and again to be read.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.progress import Progress
from gmai_pipeline.storage import CHUNK

MANIFEST_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("size", pa.int64()),
        ("md5", pa.string()),
        ("refused", pa.string()),  # null for a usable file; why it was refused (or skipped) otherwise
    ]
)

# Listed in the manifest but not inputs (normalization reports them with the ignored files).
HIDDEN = "hidden file, not an input (skipped)"
HIDDEN_FOLDER = "hidden folder, not scanned (skipped)"
ALIAS_LINK = "alias: a symlink to a file the scan lists under its own name (skipped)"
ALIAS_HARDLINK = "alias: a hard link to a file the scan lists under another name (skipped)"
NOT_INPUTS = (HIDDEN, HIDDEN_FOLDER, ALIAS_LINK, ALIAS_HARDLINK)

# (shown path, md5 getter) -> name to store; the getter hashes the file only when called.
ShownName = Callable[[str, Callable[[], str | None]], str]


class MissingDataError(FileNotFoundError):
    """A dataset's raw folder is absent: the message says where to put it and where to get it."""


@dataclass
class Refused:
    path: str
    reason: str


@dataclass
class Entry:
    """A regular file: `path` is its shown relative name (text), `real` the name to open (bytes kept
    through `os.fsdecode`'s surrogate escapes, equal to `path` for UTF-8 names)."""

    path: str
    real: str
    absolute: Path
    size: int
    mtime_ns: int
    inode: tuple[int, int] = field(default=(0, 0))


def is_input_refusal(reason: str | None) -> bool:
    """A refused manifest row that is an input (quarantined `path_refused`), not a skipped listing."""
    return bool(reason) and reason not in NOT_INPUTS


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def display_name(name: str) -> str:
    """A name from the filesystem as text: non-UTF-8 bytes and control characters (a newline
    would forge a log line) shown as `\\xNN` escapes."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        name = os.fsencode(name).decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", name)


def missing_data_message(source: SourceDataset, folder: Path) -> str:
    return (
        f"Raw data for '{source.name}' not found: expected the folder {folder}. "
        f"Download '{source.title}' from {source.url or '(no URL known; see the catalog provenance)'} "
        f"(licence: {source.license}) and unpack it there, or set GMAI_RAW_ROOT to the folder that holds '{source.name}/'."
    )


_KINDS = (
    (stat.S_ISFIFO, "named pipe"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "special file")


def walk_dataset(folder: Path) -> Iterator[Entry | Refused]:
    """Every entry under `folder`, sorted by path: an `Entry` per regular file, a `Refused` for the rest.

    Nothing is opened here (one `lstat` per entry), so a named pipe cannot block the walk.
    """
    root = Path(folder).resolve()
    seen_inodes: dict[tuple[int, int], str] = {}
    links: list[tuple[str, str, Path]] = []  # (shown, real, absolute) of file symlinks, judged at the end
    shown_names: set[str] = set()

    def listing(real_dir: str, shown_dir: str) -> Iterator[tuple[os.DirEntry, str, str]] | Refused:
        try:
            with os.scandir(root / real_dir if real_dir else root) as it:
                entries = sorted(it, key=lambda e: os.fsencode(e.name))
        except OSError as exc:
            return Refused(
                shown_dir or ".", f"folder cannot be listed ({exc.strerror or type(exc).__name__})"
            )
        return iter(
            (
                e,
                f"{real_dir}/{e.name}" if real_dir else e.name,
                f"{shown_dir}/{display_name(e.name)}" if shown_dir else display_name(e.name),
            )
            for e in entries
        )

    # Depth first in sorted order, with an explicit stack: no nesting depth can exhaust recursion.
    stack = [listing("", "")]
    while stack:
        top = stack[-1]
        if isinstance(top, Refused):
            stack.pop()
            yield top
            continue
        item = next(top, None)
        if item is None:
            stack.pop()
            continue
        e, real, shown = item
        try:
            st = e.stat(follow_symlinks=False)
        except OSError as exc:
            yield Refused(shown, f"cannot be examined ({exc.strerror or type(exc).__name__})")
            continue
        if shown != real and shown in shown_names:
            yield Refused(
                shown, "name shown with escapes (not UTF-8, or control characters) equals another file's"
            )
            continue
        shown_names.add(shown)
        if e.name.startswith("."):
            yield Refused(shown, HIDDEN_FOLDER if stat.S_ISDIR(st.st_mode) else HIDDEN)
        elif stat.S_ISLNK(st.st_mode):
            try:
                is_dir = (root / real).is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                yield Refused(shown, "symlinked folder refused")
            else:
                links.append((shown, real, root / real))
        elif stat.S_ISDIR(st.st_mode):
            stack.append(listing(real, shown))
        elif stat.S_ISREG(st.st_mode):
            inode = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and inode in seen_inodes:
                yield Refused(shown, ALIAS_HARDLINK)
                continue
            seen_inodes.setdefault(inode, shown)
            yield Entry(shown, real, root / real, st.st_size, st.st_mtime_ns, inode)
        else:
            yield Refused(shown, f"{_kind(st.st_mode)}, not a regular file: not read")

    for shown, _real, absolute in links:
        try:
            target = absolute.resolve(strict=True)
            st = target.stat()
        except (OSError, RuntimeError):
            yield Refused(shown, "symlink refused (dangling or looping; not followed)")
            continue
        scanned = seen_inodes.get((st.st_dev, st.st_ino))
        if target.is_relative_to(root) and scanned is not None:
            yield Refused(shown, ALIAS_LINK)
        else:
            yield Refused(shown, "symlink refused (not followed: it leads outside the dataset's own files)")


def open_regular(path: Path) -> int:
    """A read-only descriptor of `path` that is certain to be the regular file itself, not a link or a pipe."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


def md5_fd(fd: int) -> str:
    h = hashlib.md5(usedforsecurity=False)
    while chunk := os.read(fd, CHUNK):
        h.update(chunk)
    return h.hexdigest()


def hash_entry(entry: Entry) -> str:
    """MD5 of a walked file, read through a descriptor that refuses links and anything not regular."""
    fd = open_regular(entry.absolute)
    try:
        return md5_fd(fd)
    finally:
        os.close(fd)


class _Namer:
    """Shown names, unique within the manifest (`-2`, `-3` ... for masked names that collide)."""

    def __init__(self, shown: ShownName | None):
        self.shown = shown
        self.used: set[str] = set()

    def __call__(self, path: str, md5: Callable[[], str]) -> str:
        name = self.shown(path, md5) if self.shown is not None else path
        if name in self.used and name != path:
            stem, dot, ext = name.rpartition(".")
            stem, ext = (stem, "." + ext) if dot and "/" not in ext else (name, "")
            n = 2
            while f"{stem}-{n}{ext}" in self.used:
                n += 1
            name = f"{stem}-{n}{ext}"
        self.used.add(name)
        return name


def scan(folder: Path, progress: Progress | None = None, shown: ShownName | None = None) -> list[dict]:
    """Manifest rows; refused and skipped entries are kept as rows (with `refused` set).

    `progress` (optional) counts each file, so hashing a large dataset logs its rate as it goes.
    `shown` (optional) maps a path to the name stored (see the module docstring).
    """
    rows: list[dict] = []
    namer = _Namer(shown)
    for item in walk_dataset(folder):
        if isinstance(item, Refused):
            name = namer(item.path, lambda: None)
            rows.append({"path": name, "size": 0, "md5": None, "refused": item.reason})
        else:
            try:
                md5 = hash_entry(item)
            except OSError as exc:
                reason = "changed while scanned (now a link or not a regular file)"
                if exc.errno not in (errno.ELOOP, errno.EINVAL):
                    reason = f"cannot be read ({exc.strerror or type(exc).__name__})"
                rows.append(
                    {"path": namer(item.path, lambda: None), "size": 0, "md5": None, "refused": reason}
                )
            else:
                rows.append(
                    {
                        "path": namer(item.path, lambda md5=md5: md5),
                        "size": item.size,
                        "md5": md5,
                        "refused": None,
                    }
                )
        if progress is not None:
            progress.update()
    return rows


@dataclass
class Resolved:
    """The manifest matched against the folder as it is now (normalization's view of its inputs)."""

    files: dict[
        str, str | None
    ]  # path the reader uses (real name, shown form) -> manifest MD5 (None: pending)
    real: dict[str, str]  # the same path -> name to open, where they differ (non-UTF-8 names)
    refused: list[dict]  # manifest rows refused by the scan that are inputs
    skipped: list[str]  # manifest rows listed but not inputs (hidden, aliases)
    vanished: list[str]  # shown names in the manifest with no file now (inputs: quarantined)
    new: int = 0  # regular files not in the manifest (added since the scan; not inputs)
    swapped: dict[str, str] = field(default_factory=dict)  # regular at the scan, now a link or special
    pending: PendingNames | None = None  # files whose shown name needs their MD5 (matched when hashed)


class PendingNames:
    """Files whose manifest name depends on their MD5, matched to a manifest row when first hashed.

    `settle(path, md5)` is called with the MD5 of bytes read anyway (the verified read of the file,
    or the hash its shown name needs): it finds the unmatched manifest row with that shown name (or
    its `-2`, `-3` ... form) and that MD5, records the match in `files`, and returns True. No such
    row means the bytes are not what the scan recorded under that name (changed or added since the
    scan): False, the file stays unmatched, and every read of it is `content_changed`. What is left
    unmatched when the reader is done (`vanished`) is gone since the scan, less one row per changed
    file in the same shown folder (that file's own row, already accounted for by the file's input).
    """

    def __init__(self, shown: ShownName, files: dict[str, str | None], entries: dict[str, Entry], rows):
        self.shown, self.files, self.entries = shown, files, entries
        self.by_md5: dict[str, list[dict]] = {}
        for r in rows:
            self.by_md5.setdefault(r["md5"], []).append(r)
        self.changed: dict[str, tuple[str, str]] = {}  # path -> (shown name, MD5) of bytes no row has
        self._lock = threading.Lock()

    def settle(self, path: str, md5: str) -> bool:
        with self._lock:
            if self.files.get(path) is not None:
                return self.files[path] == md5
            name = self.shown(path, lambda: md5)
            rows = self.by_md5.get(md5, [])
            for i, r in enumerate(rows):
                if r["path"] == name or _suffixed(r["path"], name):
                    del rows[i]
                    self.files[path] = md5
                    self.changed.pop(path, None)
                    return True
            self.changed[path] = (name, md5)
            return False

    def hash(self, path: str) -> str | None:
        """The MD5 of the file's bytes (hashed now if nothing read it yet), matched or not: what its
        shown name is made of. None for a path that is not a pending file, or cannot be read."""
        md5 = self.files.get(path)
        if md5 is not None:
            return md5
        if path in self.changed:
            return self.changed[path][1]
        entry = self.entries.get(path)
        if entry is None:
            return None
        digest = _safe_hash(entry)
        if digest == "unreadable":
            return None
        self.settle(path, digest)
        return digest

    def vanished(self) -> list[str]:
        """Rows no file matched, once every pending file was hashed (see the class docstring)."""
        for path in self.entries:
            self.hash(path)
        changed_in: dict[str, int] = {}
        for name, _ in self.changed.values():
            folder = posixpath.dirname(name)
            changed_in[folder] = changed_in.get(folder, 0) + 1
        out = []
        for name in sorted(r["path"] for rows in self.by_md5.values() for r in rows):
            folder = posixpath.dirname(name)
            if changed_in.get(folder):
                changed_in[folder] -= 1
                continue
            out.append(name)
        return out


def _suffixed(candidate: str, name: str) -> bool:
    """Whether `candidate` is `name` with the scan's collision suffix (`x-2.dcm` for `x.dcm`)."""
    stem, dot, ext = name.rpartition(".")
    stem, ext = (stem, "." + ext) if dot and "/" not in ext else (name, "")
    if not (candidate.startswith(stem + "-") and candidate.endswith(ext)):
        return False
    middle = candidate[len(stem) + 1 : len(candidate) - len(ext)]
    return middle.isdigit()


class _Probe:
    """An MD5 getter that records whether the namer asked for it (a name that depends on the bytes)."""

    def __init__(self) -> None:
        self.asked = False

    def __call__(self) -> str:
        self.asked = True
        return "0" * 32


def resolve(folder: Path, manifest_rows: list[dict], shown: ShownName | None = None) -> Resolved:
    """Match the manifest to the files under `folder` now; real names never leave this process.

    Names that need a file's MD5 are matched later, when the file is hashed (`PendingNames`).
    """
    by_name = {r["path"]: r for r in manifest_rows if not r.get("refused")}
    files: dict[str, str | None] = {}
    real: dict[str, str] = {}
    namer = _Namer(shown)
    matched: set[str] = set()
    now_refused: dict[str, str] = {}
    entries: dict[str, Entry] = {}
    new = 0
    if Path(folder).is_dir():
        for item in walk_dataset(folder):
            if isinstance(item, Refused):
                namer(item.path, lambda: None)  # keeps the -2, -3 ... numbering the scan used
                now_refused[item.path] = item.reason
                continue
            if shown is not None and item.path in by_name:  # a manifest written before names were masked
                name = item.path
            else:
                if shown is not None:
                    probe = _Probe()
                    shown(item.path, probe)
                    if probe.asked:  # the name needs the MD5: matched when the file is hashed
                        files[item.path] = None
                        entries[item.path] = item
                        if item.real != item.path:
                            real[item.path] = item.real
                        continue
                name = namer(item.path, lambda: None)
            row = by_name.get(name)
            if row is None:
                new += 1
                continue
            matched.add(name)
            files[item.path] = row["md5"]
            if item.real != item.path:
                real[item.path] = item.real
    refused = [r for r in manifest_rows if r.get("refused") and is_input_refusal(r["refused"])]
    skipped = sorted(
        r["path"] for r in manifest_rows if r.get("refused") and not is_input_refusal(r["refused"])
    )
    # Say what a vanished file (or its folder) became, where its name is its real path (masked names
    # of a DICOM dataset never equal one, so nothing about their real folders is said).
    swapped: dict[str, str] = {}
    folders = {p: r for p, r in now_refused.items() if "folder" in r}
    for name in sorted(set(by_name) - matched):
        if name in now_refused:
            swapped[name] = now_refused[name]
        else:
            parent = next((f for f in folders if name.startswith(f + "/")), None)
            if parent is not None:
                swapped[name] = f"inside {parent}, which is now: {folders[parent]}"
    unmatched = [r for name, r in by_name.items() if name not in matched and name not in swapped]
    pending = PendingNames(shown, files, entries, unmatched) if entries and shown is not None else None
    vanished = [] if pending is not None else sorted(r["path"] for r in unmatched)
    return Resolved(files, real, refused, skipped, vanished, new, swapped, pending)


def _safe_hash(entry: Entry) -> str:
    try:
        return hash_entry(entry)
    except OSError:
        return "unreadable"


def fingerprint(rows: list[dict]) -> str:
    """A stable digest of the manifest: changes when any file is added, removed or edited."""
    h = hashlib.sha256()
    for r in sorted(rows, key=lambda r: r["path"]):
        h.update(f"{r['path']}\0{r['size']}\0{r['md5']}\0{r.get('refused')}\n".encode())
    return h.hexdigest()
