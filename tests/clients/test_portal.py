"""The portal emulation (gpjobs.web.portal) with aiohttp's test client, on a real gpjobs Store (file DB)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpjobs.domain import Principal, now_ms
from gpjobs.store import Store
from tests.harness.app import app_config, make_app

from .store_helpers import publish_item


@pytest.fixture
def dlpk(tmp_path: Path) -> Path:
    path = tmp_path / "content" / "model.dlpk"
    path.parent.mkdir()
    path.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: the portal serves bytes, it does not read them
    return path


@pytest.fixture
async def store(tmp_path):
    store = await Store.open(tmp_path / "gpjobs.sqlite3")
    yield store
    await store.close()


async def make_client(aiohttp_client, tmp_path: Path, store: Store, *, anonymous: bool):
    return await aiohttp_client(make_app(app_config(tmp_path, anonymous=anonymous), store=store, scheduler=None))


@pytest.fixture
async def portal(aiohttp_client, tmp_path, dlpk, store):
    client = await make_client(aiohttp_client, tmp_path, store, anonymous=False)
    alice = await store.create_token("alice", "user")
    bob = await store.create_token("bob", "user")
    root = await store.create_token("root", "admin")
    item = await publish_item(store, "alice", "trainedModel", dlpk)
    return client, store, {"alice": alice, "bob": bob, "root": root}, item


def bearer(token: str) -> dict[str, str]:
    return {"X-Esri-Authorization": f"Bearer {token}"}


async def get_json(client, path: str, **kwargs):
    resp = await client.get(path, params={"f": "json", **kwargs.pop("params", {})}, **kwargs)
    assert resp.status == 200  # Esri answers errors with 200 + an error body
    assert "json" in resp.headers["Content-Type"]
    return await resp.json()


@pytest.mark.parametrize("prefix", ["/sharing/rest", "/portal/sharing/rest"])
async def test_portals_self_points_raster_analytics_at_our_gpserver(portal, prefix):
    client, _, tokens, _ = portal
    body = await get_json(client, f"{prefix}/portals/self", headers=bearer(tokens["alice"]))
    assert body["isPortal"] is True and body["portalName"] == "gpjobs"
    assert body["portalName"] != "ArcGIS Online"  # arcgis would treat the GIS as AGOL and refuse train_model
    assert body["user"]["username"] == "alice"
    origin = str(client.make_url("")).rstrip("/")
    assert body["helperServices"]["rasterAnalytics"]["url"] == (
        f"{origin}/arcgis/rest/services/System/RasterAnalysisTools/GPServer"
    )


async def test_info_and_root_keep_arcgis_product_detection_on_portal(portal):
    client, *_ = portal
    info = await get_json(client, "/portal/sharing/rest/info")
    # Connection._check_product calls anything answering currentVersion/folders a SERVER.
    assert "currentVersion" not in info and "folders" not in info
    assert info["authInfo"]["isTokenBasedSecurity"] is True
    assert info["authInfo"]["tokenServicesUrl"].endswith("/portal/sharing/rest/generateToken")
    root = await get_json(client, "/portal/sharing/rest/")
    assert [int(p) for p in root["currentVersion"].split(".")] >= [10, 0]


async def test_tokens_from_every_source_and_auth_errors(portal):
    client, _, tokens, _ = portal
    for kwargs in (
        {"headers": {"Authorization": f"Bearer {tokens['bob']}"}},
        {"headers": bearer(tokens["bob"])},
        {"params": {"token": tokens["bob"]}},
    ):
        body = await get_json(client, "/sharing/rest/community/self", **kwargs)
        assert body["username"] == "bob" and body["role"] == "org_user"
    resp = await client.post("/sharing/rest/community/self", data={"f": "json", "token": tokens["bob"]})
    assert (await resp.json())["username"] == "bob"
    assert (await get_json(client, "/sharing/rest/community/self"))["error"]["code"] == 499
    bad = await get_json(client, "/sharing/rest/community/self", headers=bearer("nope"))
    assert bad["error"]["code"] == 498
    # portals/self is public: no user block without a token
    assert "user" not in await get_json(client, "/sharing/rest/portals/self")


async def test_community_users_only_self_unless_admin(portal):
    client, _, tokens, _ = portal
    assert (await get_json(client, "/sharing/rest/community/users/alice", headers=bearer(tokens["alice"])))[
        "username"
    ] == "alice"
    denied = await get_json(client, "/sharing/rest/community/users/bob", headers=bearer(tokens["alice"]))
    assert denied["error"]["code"] == 403
    seen = await get_json(client, "/sharing/rest/community/users/bob", headers=bearer(tokens["root"]))
    assert seen["username"] == "bob"
    missing = await get_json(client, "/sharing/rest/community/users/nobody", headers=bearer(tokens["root"]))
    assert "does not exist" in missing["error"]["message"]


async def test_item_json_and_download_only_for_owner_or_admin(portal, dlpk):
    client, _, tokens, item = portal
    for who in ("alice", "root"):
        body = await get_json(client, f"/portal/sharing/rest/content/items/{item.id}", headers=bearer(tokens[who]))
        assert body["id"] == item.id and body["owner"] == "alice"
        assert body["type"] == "Deep Learning Package" and body["name"] == "trainedModel.dlpk"
        assert body["typeKeywords"] == ["Deep Learning", "Raster"] and body["url"] is None
        assert body["size"] == dlpk.stat().st_size
    hidden = await get_json(client, f"/sharing/rest/content/items/{item.id}", headers=bearer(tokens["bob"]))
    absent = await get_json(client, f"/sharing/rest/content/items/{'0' * 32}", headers=bearer(tokens["alice"]))
    assert hidden == absent  # no way to tell "someone else's" from "does not exist"
    assert hidden["error"]["message"] == "Item does not exist or is inaccessible."

    resp = await client.get(f"/sharing/rest/content/items/{item.id}/data", headers=bearer(tokens["alice"]))
    assert resp.status == 200
    assert resp.headers["Content-Disposition"].startswith('attachment; filename="trainedModel.dlpk"')
    assert await resp.read() == dlpk.read_bytes()
    resp = await client.get(f"/sharing/rest/content/items/{item.id}/data", headers=bearer(tokens["bob"]))
    assert (await resp.json())["error"]["message"] == "Item does not exist or is inaccessible."


async def test_user_content_lists_own_items_with_folders_and_paging(portal, dlpk):
    client, store, tokens, item = portal
    folder = "0bffc1c3fe984a17bd9ae705b3ca7e22"
    in_folder = await publish_item(store, "alice", "second", dlpk, folder_id=folder)
    await publish_item(store, "bob", "bobs", dlpk)
    body = await get_json(client, "/sharing/rest/content/users/alice", headers=bearer(tokens["alice"]))
    assert [i["id"] for i in body["items"]] == [item.id] and body["total"] == 1 and body["nextStart"] == -1
    assert body["folders"] == [{"id": folder, "title": folder, "username": "alice"}]
    body = await get_json(client, f"/portal/sharing/rest/content/users/alice/{folder}", headers=bearer(tokens["alice"]))
    assert [i["id"] for i in body["items"]] == [in_folder.id]
    denied = await get_json(client, "/sharing/rest/content/users/alice", headers=bearer(tokens["bob"]))
    assert denied["error"]["code"] == 403
    for _ in range(3):
        await publish_item(store, "bob", f"m{_}", dlpk)
    page = await get_json(
        client, "/sharing/rest/content/users/bob", headers=bearer(tokens["root"]), params={"start": "2", "num": "2"}
    )
    assert page["total"] == 4 and page["num"] == 2 and page["start"] == 2 and page["nextStart"] == 4


async def test_update_item_merges_properties_like_arcgis_after_a_job(portal):
    client, store, tokens, item = portal
    props = {
        "jobUrl": "https://h/arcgis/rest/services/System/RasterAnalysisTools/GPServer/"
        "TrainDeepLearningModel/jobs/j" + "a" * 32,
        "jobType": "GPServer",
        "jobId": "j" + "a" * 32,
        "jobStatus": "completed",
    }
    import json

    resp = await client.post(
        f"/portal/sharing/rest/content/users/alice/items/{item.id}/update",
        data={"f": "json", "properties": json.dumps(props), "tags": "imagery,unet", "snippet": "tiny"},
        headers=bearer(tokens["alice"]),
    )
    assert await resp.json() == {"success": True, "id": item.id}
    updated = await store.get_item(item.id)
    assert updated.properties == props and updated.tags == ["imagery", "unet"] and updated.snippet == "tiny"
    body = await get_json(client, f"/sharing/rest/content/items/{item.id}", headers=bearer(tokens["alice"]))
    assert body["properties"]["jobStatus"] == "completed"
    denied = await client.post(
        f"/sharing/rest/content/users/alice/items/{item.id}/update",
        data={"f": "json", "title": "stolen"},
        headers=bearer(tokens["bob"]),
    )
    assert (await denied.json())["error"]["code"] == 403
    bad = await client.post(
        f"/sharing/rest/content/users/alice/items/{item.id}/update",
        data={"f": "json", "properties": "[1]"},
        headers=bearer(tokens["alice"]),
    )
    assert "JSON object" in (await bad.json())["error"]["details"][0]
    assert (await store.get_item(item.id)).title == "trainedModel"


async def test_generate_token_exchanges_a_valid_token(portal):
    client, store, tokens, _ = portal
    resp = await client.post(
        "/portal/sharing/rest/generateToken",
        data={"f": "json", "username": "alice", "password": tokens["alice"], "expiration": "5"},
    )
    body = await resp.json()
    assert body["expires"] > now_ms() and (await store.authenticate(body["token"])) == Principal("alice", "user")
    wrong_user = await (
        await client.post(
            "/sharing/rest/generateToken", data={"f": "json", "username": "bob", "password": tokens["alice"]}
        )
    ).json()
    assert wrong_user["error"]["message"] == "Unable to generate token."
    nothing = await (await client.post("/sharing/rest/generateToken", data={"f": "json"})).json()
    assert "error" in nothing
    by_header = await (
        await client.post("/sharing/rest/generateToken", data={"f": "json"}, headers=bearer(tokens["root"]))
    ).json()
    assert (await store.authenticate(by_header["token"])).role == "admin"


async def test_anonymous_mode_acts_as_the_anonymous_admin(aiohttp_client, tmp_path, dlpk, store):
    item = await publish_item(store, "anonymous", "m", dlpk)
    client = await make_client(aiohttp_client, tmp_path, store, anonymous=True)
    body = await get_json(client, "/portal/sharing/rest/portals/self")
    assert body["user"]["username"] == "anonymous"
    assert (await get_json(client, f"/sharing/rest/content/items/{item.id}"))["owner"] == "anonymous"
