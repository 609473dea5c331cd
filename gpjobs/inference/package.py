"""Reading a package (.dlpk, model folder or .emd) without torch: the server and the inference host use it."""

from __future__ import annotations

import contextlib
import json
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gpjobs.catalog import MODEL_TYPES
from gpjobs.paths import PathError, open_in_store, read_bytes_in_store


class PackageError(ValueError):
    """A pretrained_model / predict package that cannot be used (names the file and what is wrong)."""


@dataclass
class Package:
    folder: Path
    emd_path: Path
    emd: dict[str, Any]
    root: Path  # every file of the package is read inside it: its store, or the folder a .dlpk was extracted to

    @property
    def model_type(self) -> str:
        ours = self.emd.get("Gpjobs") or {}
        if ours.get("model_type"):
            return str(ours["model_type"])
        name = str(self.emd.get("ModelName", ""))
        for info in MODEL_TYPES.values():
            if info.esri_model_name and info.esri_model_name.lower() == name.lower():
                return info.name
        raise PackageError(f"{self.emd_path.name}: ModelName {name!r} is not a model type this server trains")

    @property
    def backbone(self) -> str:
        ours = self.emd.get("Gpjobs") or {}
        return str(ours.get("backbone") or (self.emd.get("ModelParameters") or {}).get("backbone") or "").upper()

    @property
    def arguments(self) -> dict[str, Any]:
        return dict((self.emd.get("Gpjobs") or {}).get("arguments") or {})

    @property
    def weights_path(self) -> Path:
        return self.emd_path.parent / str(self.emd.get("ModelFile", ""))

    def open_weights(self) -> BinaryIO:
        """The ModelFile opened for reading; PackageError when it is missing or leads outside the package's
        store (a ModelFile of "../../x" or a link out)."""
        try:
            return open_in_store(self.weights_path, self.root)
        except (PathError, OSError) as exc:
            reason = exc if isinstance(exc, PathError) else "is missing or unreadable"
            raise PackageError(f"{self.emd_path.name}: ModelFile {self.weights_path.name}: {reason}") from None


@contextlib.contextmanager
def open_package(path: str | Path, root: str | Path | None = None) -> Iterator[Package]:
    """A .dlpk (extracted to a temp dir for the duration), a model folder, or a .emd file.

    `root`: the root of the store the package lies in; its files are read only inside it (a link out is a
    PackageError naming the file). None for a package of the server's own content store or a local file:
    then nothing is read outside the package's own folder.
    """
    path = Path(path)
    if not path.exists():
        raise PackageError(f"{path}: no such package")
    confine = Path(root) if root is not None else (path if path.is_dir() else path.parent)
    with contextlib.ExitStack() as stack:
        if path.is_file() and path.suffix.lower() != ".emd":
            try:
                archive = stack.enter_context(open_in_store(path, confine))
            except PathError as exc:
                raise PackageError(f"pretrained_model: {exc}") from None
            if not zipfile.is_zipfile(archive):
                raise PackageError(f"{path.name}: not a .dlpk (ZIP) file")
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpjobs-dlpk-")))
            confine = tmp
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():  # refuse members escaping the folder
                    target = (tmp / member).resolve()
                    if not target.is_relative_to(tmp.resolve()):
                        raise PackageError(f"{path.name}: member {member!r} points outside the package")
                zf.extractall(tmp)
            folder = tmp
        elif path.is_dir():
            folder = path
        else:
            folder = path.parent
        emds = [path] if path.suffix.lower() == ".emd" else sorted(folder.glob("*.emd"))
        if len(emds) != 1:
            raise PackageError(f"{path.name}: a package needs exactly one .emd at its top level, found {len(emds)}")
        try:
            emd = json.loads(read_bytes_in_store(emds[0], confine).decode("utf-8-sig"))
        except PathError as exc:
            raise PackageError(f"pretrained_model: {exc}") from None
        except (OSError, ValueError, RecursionError) as exc:
            raise PackageError(f"{emds[0].name}: not a readable .emd ({exc})") from exc
        if not isinstance(emd, dict):
            raise PackageError(f"{emds[0].name}: not a readable .emd (it does not hold a JSON object)")
        yield Package(folder, emds[0], emd, confine)


def read_package_emd(path: str | Path) -> dict[str, Any]:
    """The .emd of a .dlpk, read from the archive without extracting the package (submit-time checks)."""
    path = Path(path)
    if path.suffix.lower() != ".dlpk" or not path.is_file():
        raise PackageError(f"{path.name} is not a .dlpk file")
    try:
        with zipfile.ZipFile(path) as zf:
            emds = [n for n in zf.namelist() if n.lower().endswith(".emd") and "/" not in n.strip("/")]
            if len(emds) != 1:
                raise PackageError(f"{path.name}: a package needs exactly one .emd at its top level, found {len(emds)}")
            emd = json.loads(zf.read(emds[0]).decode("utf-8-sig"))
    except (OSError, zipfile.BadZipFile, ValueError, RecursionError) as exc:
        raise PackageError(f"{path.name} is not a readable .dlpk (ZIP with an .emd): {exc}") from None
    if not isinstance(emd, dict):
        raise PackageError(f"{path.name}: its .emd does not hold a JSON object")
    return emd
