"""The one resolver from user-supplied paths to safe local paths inside a registered store, and the one
place that opens files and folders of a store.

Users name data the way ArcGIS clients do: `/fileShares/<store>/<dir>`, `/rasterStores/<store>/<dir>`,
`{"uri": ...}`, `{"uris": [...]}`, or a comma-separated list of those. Every such path is resolved here
(symlinks included) and must stay inside the root of the store it names; anything else is a `PathError`
whose message says what is accepted.

A path checked at submit can be changed before it is used (a folder swapped for a symbolic link while the
job waits), so every later read or write goes through `open_in_store` / `open_store_folder`, which check
the file or folder actually opened: whoever can write into a share cannot make the server or the training
child read or write outside it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote

# URL-space prefix (lower-cased) -> StoreRoots attribute.
_PREFIXES = {"fileshares": "file_shares", "rasterstores": "raster_stores"}
_UNSUPPORTED_PREFIXES = ("cloudstores", "bigdatafileshares")


class PathError(ValueError):
    """A user path that is malformed, names an unknown store, or leaves its store."""


class OutsideStore(PathError):
    """A file or folder of a store that, when opened, leads outside the store (a symbolic link) or is not a
    plain file or folder. The message names it relative to its store and says how to fix it."""


@dataclass(frozen=True)
class StoreRoots:
    """The registered data stores (name -> local root, per kind) and the UNC shares mapped onto them."""

    file_shares: Mapping[str, Path] = field(default_factory=dict)
    raster_stores: Mapping[str, Path] = field(default_factory=dict)
    unc_paths: Mapping[str, Path] = field(default_factory=dict)  # \\server\share -> local mount

    @classmethod
    def from_config(cls, config: Any) -> StoreRoots:
        """Roots from a Config (any object with `file_shares` / `raster_stores` / `unc_paths` mappings)."""

        def paths(name: str) -> dict[str, Path]:
            return {k: Path(v) for k, v in (getattr(config, name, None) or {}).items()}

        return cls(file_shares=paths("file_shares"), raster_stores=paths("raster_stores"), unc_paths=paths("unc_paths"))

    def resolve(self, user_path: str) -> ResolvedPath:
        return resolve_path(user_path, self)

    def describe(self) -> str:
        names = [f"/fileShares/{n}" for n in self.file_shares] + [f"/rasterStores/{n}" for n in self.raster_stores]
        return ", ".join(names) if names else "(none registered)"

    def root_containing(self, local: str | Path) -> Path | None:
        """The resolved root of the registered store that `local` (an already resolved path) lies in."""
        for _kind, _name, root in self.all_roots():
            resolved = Path(os.path.realpath(root))
            if _inside(Path(local), resolved):
                return resolved
        return None

    def all_roots(self) -> list[tuple[str, str, Path]]:
        """(kind, name, root) of every store, kind as in the URL space (fileShares | rasterStores)."""
        return [("fileShares", n, Path(r)) for n, r in self.file_shares.items()] + [
            ("rasterStores", n, Path(r)) for n, r in self.raster_stores.items()
        ]


@dataclass(frozen=True)
class LocalPaths:
    """Plain local paths, for `gpjobs train` and `gpjobs infer` on the user's own machine (no stores).

    The root of every path is the filesystem root `/`: the user can read whatever they could link to, so
    confining their own exports (whose chips may be links into a chip pool elsewhere) would only get in
    the way. Files are still opened through `open_in_store` (regular files only).
    """

    def resolve(self, user_path: str) -> ResolvedPath:
        text = str(user_path).strip()
        if not text:
            raise PathError("empty path")
        local = Path(os.path.realpath(os.path.expanduser(text)))
        return ResolvedPath(alias=text, local=local, root=Path(local.anchor))

    def describe(self) -> str:
        return "any local path"


class PathResolver(Protocol):
    """What parameter parsing needs from a resolver: StoreRoots on the server, LocalPaths on the CLI."""

    def resolve(self, user_path: str) -> ResolvedPath: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class ResolvedPath:
    """A user path after resolution: the alias as the user wrote it (normalised) and the local path."""

    alias: str  # e.g. /fileShares/default/exports/buildings
    local: Path  # absolute, symlinks resolved, inside `root`
    root: Path


def _components(text: str) -> list[str]:
    """Path components of a user path; rejects traversal in any spelling (raw, %-encoded, backslashes)."""
    if "\x00" in text:
        raise PathError("path contains a NUL character")
    decoded = text
    for _ in range(3):  # %252e%252e is '..' after two decodings: reject whatever decodes to traversal
        nxt = unquote(decoded)
        if nxt == decoded:
            break
        decoded = nxt
    for candidate in (text, decoded):
        parts = candidate.replace("\\", "/").split("/")
        if any(p.strip() == ".." for p in parts):
            raise PathError(f"path '{text}' contains '..'; name a folder inside a registered store instead")
    return [p for p in text.replace("\\", "/").split("/") if p not in ("", ".")]


def _inside(local: Path, root: Path) -> bool:
    return local == root or local.is_relative_to(root)


def resolve_path(user_path: str, roots: StoreRoots) -> ResolvedPath:
    """Resolve one `/fileShares/<store>/...` or `/rasterStores/<store>/...` path (need not exist).

    An absolute local path is accepted only when it already lies inside a registered store root.
    """
    text = str(user_path).strip()
    if not text:
        raise PathError("empty path")
    parts = _components(text)
    if text.startswith("\\\\") or text.startswith("//"):
        return _resolve_local(_unc_to_local(text, parts, roots), text, roots)
    if not parts:
        raise PathError(f"path '{text}' names no folder")
    prefix = parts[0].lower()
    if prefix in _PREFIXES:
        if len(parts) < 2:
            raise PathError(f"path '{text}' names no store; use /{parts[0]}/<store>/<folder>")
        stores: Mapping[str, Path] = getattr(roots, _PREFIXES[prefix])
        name = parts[1]
        root = stores.get(name)
        if root is None:  # store names are case-insensitive in ArcGIS
            root = next((r for n, r in stores.items() if n.lower() == name.lower()), None)
        if root is None:
            raise PathError(
                f"unknown data store '{parts[0]}/{name}' in '{text}'. Registered stores: {roots.describe()}"
            )
        root_resolved = Path(os.path.realpath(root))
        local = Path(os.path.realpath(root_resolved.joinpath(*parts[2:])))
        if not _inside(local, root_resolved):
            raise PathError(f"path '{text}' leads outside its data store (symbolic link?)")
        alias = "/" + "/".join([parts[0], name, *parts[2:]])
        return ResolvedPath(alias=alias, local=local, root=root_resolved)
    if prefix in _UNSUPPORTED_PREFIXES:
        raise PathError(
            f"'{parts[0]}' paths are not supported by this server; use one of the registered stores: {roots.describe()}"
        )
    if text.startswith("/"):
        return _resolve_local(Path(text), text, roots)
    raise PathError(
        f"path '{text}' is not inside a registered data store. Use /fileShares/<store>/<folder> "
        f"or /rasterStores/<store>/<folder>; registered stores: {roots.describe()}"
    )


def _resolve_local(path: Path, text: str, roots: StoreRoots) -> ResolvedPath:
    """An absolute local path, accepted only when (symlinks resolved) it lies inside a registered store."""
    local = Path(os.path.realpath(path))
    for kind, name, root in roots.all_roots():
        root_resolved = Path(os.path.realpath(root))
        if _inside(local, root_resolved):
            rel = local.relative_to(root_resolved).parts
            return ResolvedPath(alias="/" + "/".join([kind, name, *rel]), local=local, root=root_resolved)
    raise PathError(
        f"path '{text}' is not inside a registered data store. Use /fileShares/<store>/<folder> "
        f"or /rasterStores/<store>/<folder>; registered stores: {roots.describe()}"
    )


def _unc_to_local(text: str, parts: list[str], roots: StoreRoots) -> Path:
    """\\\\server\\share\\a\\b -> <mount>/a/b through the longest configured `unc_paths` prefix."""
    best: tuple[int, Path] | None = None
    for prefix, mount in roots.unc_paths.items():
        prefix_parts = [p.lower() for p in _components(prefix)]
        if [p.lower() for p in parts[: len(prefix_parts)]] == prefix_parts and (
            best is None or len(prefix_parts) > best[0]
        ):
            best = (len(prefix_parts), Path(mount))
    if best is None:
        share = "\\\\" + "\\".join(parts[:2])
        raise PathError(
            f"UNC path '{text}' is not mapped to a local folder. Add its share to the [unc_paths] "
            f"setting, e.g. '{share}' = \"/mnt/<share>\", and register that folder (or one above "
            f"it) as a file share; registered stores: {roots.describe()}"
        )
    return best[1].joinpath(*parts[best[0] :])


def split_folder_value(value: Any) -> list[str]:
    """The user paths in an `in_folder` value, in every form clients send.

    Accepts a plain path, a comma-separated list, `{"uri": p}`, `{"uris": [p, ...]}`, a JSON list, and
    the JSON text of any of those.
    """
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("{", "["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise PathError(f"in_folder is not valid JSON: {exc.msg}") from None
        else:
            paths = [p.strip() for p in text.split(",")]
            if not text or any(not p for p in paths):
                raise PathError("in_folder has an empty path in it")
            return paths
    if isinstance(value, Mapping):
        if "uris" in value:
            uris = value["uris"]
            if not isinstance(uris, list) or not uris:
                raise PathError('in_folder {"uris": [...]} needs a non-empty list of paths')
            return [p for u in uris for p in split_folder_value(u if isinstance(u, str) else u)]
        if "uri" in value and isinstance(value["uri"], str):
            return split_folder_value(value["uri"])
        raise PathError('in_folder object must be {"uri": "<path>"} or {"uris": ["<path>", ...]}')
    if isinstance(value, list):
        if not value:
            raise PathError("in_folder list is empty")
        return [p for item in value for p in split_folder_value(item)]
    raise PathError(
        'in_folder must be a path, a comma-separated list of paths, {"uri": "<path>"} or {"uris": ["<path>", ...]}'
    )


def resolve_folders(value: Any, resolver: PathResolver) -> list[ResolvedPath]:
    """Every folder of an `in_folder` value, resolved (existence is checked by the caller)."""
    return [resolver.resolve(p) for p in split_folder_value(value)]


# --- opening what lies in a store ---------------------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def shown_in_store(path: str | Path, root: str | Path) -> str:
    """`path` as its store shows it (relative to the root), never the local path of the machine."""
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    for base in (root, Path(os.path.realpath(root))):
        if _inside(path, base) and path != base:
            return path.relative_to(base).as_posix()
    return path.name or "the store's root"


def inside_store(path: str | Path, root: str | Path) -> bool:
    """Whether `path` (links resolved) lies inside `root`: for folders that are only listed; files are
    opened with `open_in_store`, which checks the file actually opened."""
    return _inside(Path(os.path.realpath(path)), Path(os.path.realpath(root)))


def _outside(path: str | Path, root: str | Path) -> OutsideStore:
    return OutsideStore(
        f"'{shown_in_store(path, root)}' leads outside its data store through a symbolic link; "
        "replace the link with the file or folder itself (or a link that stays inside the store)"
    )


def open_in_store(path: str | Path, root: str | Path) -> BinaryIO:
    """`path` opened for reading, if it is a regular file that lies inside `root` with every link resolved.

    The check is made on the file actually opened (its device and inode against the resolved path's), so a
    link swapped in between the check and the open cannot redirect the read. Opened non-blocking: a FIFO
    planted in an export cannot hang the reader. OutsideStore names the file otherwise.
    """
    real_root = Path(os.path.realpath(root))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.EOPNOTSUPP):  # a socket or a FIFO without writer
            raise OutsideStore(
                f"'{shown_in_store(path, root)}' is not a regular file; replace it with the file itself"
            ) from None
        raise
    try:
        opened = os.fstat(fd)
        real = Path(os.path.realpath(path))
        if not _inside(real, real_root):
            raise _outside(path, root)
        try:
            now = os.stat(real)
        except OSError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
            raise OutsideStore(
                f"'{shown_in_store(path, root)}' changed while it was being opened (a symbolic link "
                "replaced?); make it a plain file inside the store"
            )
        if not stat.S_ISREG(opened.st_mode):
            raise OutsideStore(f"'{shown_in_store(path, root)}' is not a regular file; replace it with the file itself")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    handle = os.fdopen(fd, "rb")
    assert isinstance(handle.raw, io.FileIO)
    handle.raw.name = os.fspath(path)  # readers (tifffile) want the file's name, not its descriptor number
    return handle


def read_bytes_in_store(path: str | Path, root: str | Path) -> bytes:
    """The content of a store file, opened through `open_in_store`."""
    with open_in_store(path, root) as fh:
        return fh.read()


def open_store_folder(root: str | Path, folder: str | Path, *, create: bool = False) -> int:
    """A directory fd on `folder` (a resolved path inside `root`), reached from the root one component at
    a time without following any symbolic link; missing folders are made when `create`.

    Whatever is swapped in on the way (a link, a file) is refused with OutsideStore, and writing relative to
    the returned fd (`dir_fd=`) cannot leave the folder it names. The caller closes the fd.
    """
    real_root = Path(os.path.realpath(root))
    target = Path(os.path.abspath(folder))
    base = next((b for b in (Path(os.path.abspath(root)), real_root) if _inside(target, b)), None)
    if base is None:
        raise _outside(target, root)
    if create:
        os.makedirs(real_root, exist_ok=True)
    fd = os.open(real_root, _DIR_FLAGS)
    try:
        walked = real_root
        for part in target.relative_to(base).parts:
            walked = walked / part
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise OutsideStore(
                        f"'{shown_in_store(walked, real_root)}' is not a plain folder (a symbolic "
                        "link or a file); make it a real folder inside the store"
                    ) from None
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise
