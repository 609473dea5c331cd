"""paths.py: every user path form resolves inside its store; traversal in any spelling is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpjobs.paths import PathError, StoreRoots, resolve_folders, resolve_path, split_folder_value


@pytest.fixture()
def roots(tmp_path: Path) -> StoreRoots:
    share = tmp_path / "share"
    (share / "exports" / "a").mkdir(parents=True)
    (share / "exports" / "b").mkdir(parents=True)
    rasters = tmp_path / "rasters"
    (rasters / "x").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    return StoreRoots(file_shares={"default": share}, raster_stores={"imagery": rasters})


def test_file_share_path_resolves_inside_root(roots: StoreRoots) -> None:
    r = resolve_path("/fileShares/default/exports/a", roots)
    assert r.local == Path(os.path.realpath(roots.file_shares["default"])) / "exports" / "a"
    assert r.alias == "/fileShares/default/exports/a"


def test_prefix_and_store_name_are_case_insensitive(roots: StoreRoots) -> None:
    assert resolve_path("/FILESHARES/Default/exports/a/", roots).local.name == "a"
    assert resolve_path("/rasterStores/imagery/x", roots).local.name == "x"


@pytest.mark.parametrize(
    "bad",
    [
        "/fileShares/default/../secret",
        "/fileShares/default/exports/../../secret",
        "/fileShares/default/%2e%2e/secret",
        "/fileShares/default/%252e%252e/secret",
        "/fileShares/default/exports\\..\\..\\secret",
        "/fileShares/default/a\x00b",
    ],
)
def test_traversal_in_any_spelling_is_rejected(roots: StoreRoots, bad: str) -> None:
    with pytest.raises(PathError):
        resolve_path(bad, roots)


def test_symlink_out_of_the_share_is_rejected(roots: StoreRoots, tmp_path: Path) -> None:
    (roots.file_shares["default"] / "escape").symlink_to(tmp_path / "secret")
    with pytest.raises(PathError, match="outside"):
        resolve_path("/fileShares/default/escape", roots)


def test_symlink_inside_the_share_is_fine(roots: StoreRoots) -> None:
    share = roots.file_shares["default"]
    (share / "alias").symlink_to(share / "exports" / "b")
    assert resolve_path("/fileShares/default/alias", roots).local.name == "b"


@pytest.mark.parametrize(
    "bad, match",
    [
        ("/fileShares/nope/x", "unknown data store"),
        ("/fileShares", "names no store"),
        ("/cloudStores/s3/x", "not supported"),
        ("\\\\server\\share\\x", "UNC"),
        ("relative/path", "not inside a registered"),
        ("/etc/passwd", "not inside a registered"),
    ],
)
def test_unknown_or_unsupported_locations_get_clear_errors(roots: StoreRoots, bad: str, match: str) -> None:
    with pytest.raises(PathError, match=match):
        resolve_path(bad, roots)


def test_absolute_local_path_inside_a_store_is_accepted(roots: StoreRoots) -> None:
    local = roots.file_shares["default"] / "exports" / "a"
    r = resolve_path(str(local), roots)
    assert r.alias == "/fileShares/default/exports/a"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("/fileShares/default/exports/a", ["/fileShares/default/exports/a"]),
        (
            "/fileShares/default/exports/a, /fileShares/default/exports/b",
            ["/fileShares/default/exports/a", "/fileShares/default/exports/b"],
        ),
        ('{"uri": "/fileShares/default/exports/a"}', ["/fileShares/default/exports/a"]),
        (
            '{"uris": ["/fileShares/default/exports/a", "/rasterStores/imagery/x"]}',
            ["/fileShares/default/exports/a", "/rasterStores/imagery/x"],
        ),
        ('["/fileShares/default/exports/a"]', ["/fileShares/default/exports/a"]),
        ({"uri": "/fileShares/default/exports/a"}, ["/fileShares/default/exports/a"]),
    ],
)
def test_every_in_folder_form_is_split(value, expected) -> None:
    assert split_folder_value(value) == expected


@pytest.mark.parametrize("value", ["", "a,,b", "{not json", '{"url": "x"}', '{"uris": []}', "[]", 5])
def test_malformed_in_folder_values_are_rejected(value) -> None:
    with pytest.raises(PathError):
        split_folder_value(value)


def test_resolve_folders_resolves_each(roots: StoreRoots) -> None:
    got = resolve_folders('{"uris": ["/fileShares/default/exports/a", "/fileShares/default/exports/b"]}', roots)
    assert [r.local.name for r in got] == ["a", "b"]


def test_unc_paths_resolve_through_configured_mounts_inside_the_stores(tmp_path: Path) -> None:
    share = tmp_path / "mnt" / "gis"
    (share / "exports" / "a").mkdir(parents=True)
    (tmp_path / "mnt" / "other").mkdir()
    roots = StoreRoots(
        file_shares={"gis": share},
        unc_paths={"\\\\fileserver\\gis": share, "//fileserver/other": tmp_path / "mnt" / "other"},
    )
    for text in ("\\\\fileserver\\gis\\exports\\a", "//FILESERVER/gis/exports/a", "\\\\fileserver/gis/exports/a"):
        r = resolve_path(text, roots)
        assert r.local == (share / "exports" / "a").resolve() and r.alias == "/fileShares/gis/exports/a"
    with pytest.raises(PathError, match="not inside a registered data store"):
        resolve_path("\\\\fileserver\\other\\x", roots)  # mapped, but no store holds it
    with pytest.raises(PathError, match=r"\[unc_paths\]"):
        resolve_path("\\\\elsewhere\\share\\x", roots)
    with pytest.raises(PathError, match="'..'"):
        resolve_path("\\\\fileserver\\gis\\..\\..\\etc", roots)


def test_unc_paths_setting(tmp_path: Path) -> None:
    from gpjobs.config import ConfigError, load_config

    config = load_config(overrides={"data_dir": str(tmp_path), "unc_paths": {"\\\\srv\\gis": str(tmp_path)}})
    assert StoreRoots.from_config(config).unc_paths == {"\\\\srv\\gis": tmp_path}
    with pytest.raises(ConfigError, match="UNC share"):
        load_config(overrides={"data_dir": str(tmp_path), "unc_paths": {"gis": str(tmp_path)}})
