"""The one resolver from user-supplied paths to safe local paths inside a registered store.

Users name data the way ArcGIS clients do: `/fileShares/<store>/<dir>`, `/rasterStores/<store>/<dir>`,
`{"uri": ...}`, `{"uris": [...]}`, or a comma-separated list of those. Every such path is resolved here
(symlinks included) and must stay inside the root of the store it names; anything else is a `PathError`
whose message says what is accepted. The training child re-checks the paths it opens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

# URL-space prefix (lower-cased) -> StoreRoots attribute.
_PREFIXES = {"fileshares": "file_shares", "rasterstores": "raster_stores"}
_UNSUPPORTED_PREFIXES = ("cloudstores", "bigdatafileshares")


class PathError(ValueError):
    """A user path that is malformed, names an unknown store, or leaves its store."""


@dataclass(frozen=True)
class StoreRoots:
    """The registered data stores (name -> local root, per kind) and the UNC shares mapped onto them."""

    file_shares: Mapping[str, Path] = field(default_factory=dict)
    raster_stores: Mapping[str, Path] = field(default_factory=dict)
    unc_paths: Mapping[str, Path] = field(default_factory=dict)  # \\server\share -> local mount

    @classmethod
    def from_config(cls, config: Any) -> "StoreRoots":
        """Roots from a Config (any object with `file_shares` / `raster_stores` / `unc_paths` mappings)."""
        def paths(name: str) -> dict[str, Path]:
            return {k: Path(v) for k, v in (getattr(config, name, None) or {}).items()}
        return cls(file_shares=paths("file_shares"), raster_stores=paths("raster_stores"),
                   unc_paths=paths("unc_paths"))

    def resolve(self, user_path: str) -> "ResolvedPath":
        return resolve_path(user_path, self)

    def describe(self) -> str:
        names = [f"/fileShares/{n}" for n in self.file_shares] + [f"/rasterStores/{n}" for n in self.raster_stores]
        return ", ".join(names) if names else "(none registered)"

    def all_roots(self) -> list[tuple[str, str, Path]]:
        """(kind, name, root) of every store, kind as in the URL space (fileShares | rasterStores)."""
        return ([("fileShares", n, Path(r)) for n, r in self.file_shares.items()]
                + [("rasterStores", n, Path(r)) for n, r in self.raster_stores.items()])


@dataclass(frozen=True)
class LocalPaths:
    """Plain local paths, for `gpjobs train` and `gpjobs infer` on the user's own machine (no stores)."""

    def resolve(self, user_path: str) -> "ResolvedPath":
        text = str(user_path).strip()
        if not text:
            raise PathError("empty path")
        local = Path(os.path.realpath(os.path.expanduser(text)))
        return ResolvedPath(alias=text, local=local, root=Path(local.anchor))

    def describe(self) -> str:
        return "any local path"


class PathResolver(Protocol):
    """What parameter parsing needs from a resolver: StoreRoots on the server, LocalPaths on the CLI."""

    def resolve(self, user_path: str) -> "ResolvedPath": ...

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
            raise PathError(f"unknown data store '{parts[0]}/{name}' in '{text}'. "
                            f"Registered stores: {roots.describe()}")
        root_resolved = Path(os.path.realpath(root))
        local = Path(os.path.realpath(root_resolved.joinpath(*parts[2:])))
        if not _inside(local, root_resolved):
            raise PathError(f"path '{text}' leads outside its data store (symbolic link?)")
        alias = "/" + "/".join([parts[0], name, *parts[2:]])
        return ResolvedPath(alias=alias, local=local, root=root_resolved)
    if prefix in _UNSUPPORTED_PREFIXES:
        raise PathError(f"'{parts[0]}' paths are not supported by this server; "
                        f"use one of the registered stores: {roots.describe()}")
    if text.startswith("/"):
        return _resolve_local(Path(text), text, roots)
    raise PathError(f"path '{text}' is not inside a registered data store. Use /fileShares/<store>/<folder> "
                    f"or /rasterStores/<store>/<folder>; registered stores: {roots.describe()}")


def _resolve_local(path: Path, text: str, roots: StoreRoots) -> ResolvedPath:
    """An absolute local path, accepted only when (symlinks resolved) it lies inside a registered store."""
    local = Path(os.path.realpath(path))
    for kind, name, root in roots.all_roots():
        root_resolved = Path(os.path.realpath(root))
        if _inside(local, root_resolved):
            rel = local.relative_to(root_resolved).parts
            return ResolvedPath(alias="/" + "/".join([kind, name, *rel]), local=local, root=root_resolved)
    raise PathError(f"path '{text}' is not inside a registered data store. Use /fileShares/<store>/<folder> "
                    f"or /rasterStores/<store>/<folder>; registered stores: {roots.describe()}")


def _unc_to_local(text: str, parts: list[str], roots: StoreRoots) -> Path:
    """\\\\server\\share\\a\\b -> <mount>/a/b through the longest configured `unc_paths` prefix."""
    best: tuple[int, Path] | None = None
    for prefix, mount in roots.unc_paths.items():
        prefix_parts = [p.lower() for p in _components(prefix)]
        if [p.lower() for p in parts[:len(prefix_parts)]] == prefix_parts and (
                best is None or len(prefix_parts) > best[0]):
            best = (len(prefix_parts), Path(mount))
    if best is None:
        share = "\\\\" + "\\".join(parts[:2])
        raise PathError(f"UNC path '{text}' is not mapped to a local folder. Add its share to the [unc_paths] "
                        f"setting, e.g. '{share}' = \"/mnt/<share>\", and register that folder (or one above "
                        f"it) as a file share; registered stores: {roots.describe()}")
    return best[1].joinpath(*parts[best[0]:])


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
    raise PathError("in_folder must be a path, a comma-separated list of paths, "
                    '{"uri": "<path>"} or {"uris": ["<path>", ...]}')


def resolve_folders(value: Any, resolver: PathResolver) -> list[ResolvedPath]:
    """Every folder of an `in_folder` value, resolved (existence is checked by the caller)."""
    return [resolver.resolve(p) for p in split_folder_value(value)]
