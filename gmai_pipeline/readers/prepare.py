"""Before a reader runs: unpack the archives it asks for, and find where its layout starts.

The layout root is the reader's `root` inside the dataset folder, below any *single wrapper folders*:
a download unpacked as `amos22/...` (beside a `__MACOSX/`), or a Kaggle `archive/...`, reads the same as
one unpacked in place. A wrapper is only descended into when the layout is not found where it is:
the declaration is written against the dataset's documented top level, and a folder that is part of
that layout is never skipped.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path, PurePosixPath

from gmai_pipeline.layouts import LayoutReader, ReaderBase
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.archives import ArchiveError, find_archives, unpack
from gmai_pipeline.readers.base import Event, Quarantined, ReaderContext
from gmai_pipeline.readers.templates import Template

IGNORED_FOLDERS = {"__MACOSX"}
DOC_SUFFIXES = (".txt", ".md", ".pdf", ".html", ".htm", ".rtf", ".docx")
DOC_NAMES = ("readme", "license", "licence", "citation", "changelog", "copying", "notice")


def _is_doc(name: str) -> bool:
    """Files that do not stop a wrapper from being one: documentation, and the archive it came from."""
    low = name.lower()
    return low.endswith(DOC_SUFFIXES) or low.startswith(DOC_NAMES) or bool(find_archives([name]))


def _entries(paths, prefix: str) -> tuple[set[str], set[str]]:
    """(sub-folders, files) directly inside `prefix` ('' = the dataset folder)."""
    head = prefix + "/" if prefix else ""
    folders, files = set(), set()
    for p in paths:
        if not p.startswith(head):
            continue
        rest = p[len(head) :]
        if "/" in rest:
            folders.add(rest.split("/", 1)[0])
        else:
            files.add(rest)
    return folders - IGNORED_FOLDERS, files


def single_wrapper(paths, prefix: str) -> str | None:
    """The one folder inside `prefix` when nothing else is there but documentation, else None."""
    folders, files = _entries(paths, prefix)
    if len(folders) != 1 or any(not _is_doc(f) for f in files):
        return None
    child = next(iter(folders))
    return f"{prefix}/{child}" if prefix else child


def _here(ctx: ReaderContext, spec: ReaderBase, base: str) -> bool:
    """Whether the reader's layout starts at `base`."""
    head = base + "/" if base else ""
    inside = [p[len(head) :] for p in ctx.files if p.startswith(head)]
    if not inside:
        return False
    if isinstance(spec, LayoutReader):
        patterns = [Template(t, spec.fields) for t in spec.images.path]
        tables = set(spec.table.file) if spec.table else set()
        return any(t.match(p) for p in inside for t in patterns) or any(
            fnmatch.fnmatchcase(p, t) for p in inside for t in tables
        )
    if spec.kind == "image_folder":
        from gmai_pipeline.readers.image_folder import templates

        layouts = templates(spec)  # type: ignore[arg-type]
        exts = tuple(e.lower() for e in spec.extensions)  # type: ignore[attr-defined]
        return any(p.lower().endswith(exts) and any(t.match(p) for t in layouts) for p in inside)
    anchors = spec.anchors()
    if not anchors:
        return True
    for a in anchors:
        a = a.strip("/")
        if a in inside or any(p.startswith(a + "/") for p in inside):
            return True
    return False


def locate_root(ctx: ReaderContext, spec: ReaderBase) -> str:
    """The layout root (module docstring); the declared root itself when the layout is found nowhere."""
    prefix = ""
    while True:
        base = "/".join(p for p in (prefix, spec.root) if p)
        if _here(ctx, spec, base):
            return base
        prefix = single_wrapper(ctx.files, prefix)
        if prefix is None:
            return spec.root


def _wanted(name: str, patterns) -> bool:
    leaf = PurePosixPath(name).name
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(leaf, p) for p in patterns)


def unpack_archives(ctx: ReaderContext, spec: ReaderBase, cache: Path) -> tuple[list[Event], list[str]]:
    """Unpack the archives `spec.unpack` names; (events for those that failed, archives left packed)."""
    events: list[Event] = []
    left: list[str] = []
    archives = find_archives(ctx.files)
    for pattern in spec.unpack:
        if not any(_wanted(a.name, [pattern]) for a in archives):
            events.append(
                Quarantined(
                    pattern,
                    "read",
                    Reason.MISSING_FILE,
                    f"{pattern}: reader.unpack names no archive in the dataset folder",
                )
            )
    for archive in archives:
        if not _wanted(archive.name, spec.unpack):
            left.append(archive.name)
            continue
        for part in archive.parts:
            ctx.claim(part)
        try:
            members = unpack(ctx, archive, cache)
        except ArchiveError as err:
            events.append(Quarantined(archive.name, "read", err.reason, err.detail))
            continue
        for rel, (folder, member, md5) in members.items():
            if rel in ctx.files:
                ctx.counters["archive_members_already_unpacked"] += 1
                continue
            ctx.files[rel] = md5  # what every read of the member is checked against
            ctx.unpacked[rel] = (folder, member)
        ctx.counters["archives_unpacked"] += 1
    return events, left


def prepare(ctx: ReaderContext, spec: ReaderBase, cache: Path) -> tuple[list[Event], list[str]]:
    """Unpack, then locate the layout root (sets `ctx.base`); (events, archives left packed)."""
    try:
        events, left = unpack_archives(ctx, spec, cache)
    except OSError as exc:  # the cache itself cannot be written: say where
        raise OSError(f"cannot unpack archives into {cache}: {exc}") from exc
    ctx.base = locate_root(ctx, spec)
    return events, left
