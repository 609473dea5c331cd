"""A minimal ArcGIS portal under `/sharing/rest` and `/portal/sharing/rest`, backed by gpjobs' users, tokens
and items — enough for `arcgis.gis.GIS(url, token=...)` + `arcgis.learn.train_model` and for portal-style
reads of published models (protocol.md §5.2, §5.3, §10).

Users exist only as token holders (`gpjobs token`); `generateToken` therefore exchanges a valid token (as the
caller's credential, or as `password` with `username`) for a fresh one instead of checking a password.
Handlers are thin: authenticate, call one store function, render with `gpjobs.web.render`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from gpjobs.appkeys import CONFIG_KEY, STORE_KEY
from gpjobs.domain import (
    ITEM_TYPE_DLPK,
    ITEM_TYPE_FEATURE_SERVICE,
    ITEM_TYPE_IMAGE_SERVICE,
    Item,
    ItemExists,
    ItemNotFound,
    Principal,
    is_item_id,
    new_item_id,
    now_ms,
)
from gpjobs.web import model_card, portal_json
from gpjobs.web.auth import PRINCIPAL_KEY, identify, request_token, token_query
from gpjobs.web.gp_service import task_path
from gpjobs.web.render import (
    PARAMS_KEY,
    EsriError,
    forbidden,
    json_response,
    load_params,
    output_format,
    params,
    render,
    token_required,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DEFAULT_TOKEN_MINUTES = 60
MAX_TOKEN_MINUTES = 14 * 24 * 60
UPDATABLE_FIELDS = ("title", "description", "snippet")


def item_missing() -> EsriError:
    # The portal's own words; the same answer whether the item is absent or belongs to someone else.
    return EsriError(400, "Item does not exist or is inaccessible.", [])


def setup_portal(app: web.Application) -> None:
    """Register the portal routes under both sharing prefixes (GET and POST, like the portal)."""
    routes: list[tuple[str, Handler]] = [
        ("", rest_root),
        ("/", rest_root),
        ("/info", info),
        ("/generateToken", generate_token),
        ("/portals/self", portals_self),
        ("/community/self", community_self),
        ("/community/users/{username}", community_user),
        ("/content/items/{item_id}", content_item),
        ("/content/items/{item_id}/data", content_item_data),
        ("/content/items/{item_id}/card/{name}", content_item_card),
        ("/content/items/{item_id}/resources/{name}", content_item_resource),
        ("/portals/self/isServiceNameAvailable", service_name_available),
        ("/content/users/{username}/createService", create_service),
        ("/content/users/{username}/{folder}/createService", create_service),
        ("/content/users/{username}/items/{item_id}/delete", delete_item),
        ("/content/users/{username}/{folder}/items/{item_id}/delete", delete_item),
        ("/content/users/{username}", user_content),
        ("/content/users/{username}/items/{item_id}", user_item),
        ("/content/users/{username}/items/{item_id}/update", update_item),
        ("/content/users/{username}/{folder}", user_content),
        ("/content/users/{username}/{folder}/items/{item_id}", user_item),
        ("/content/users/{username}/{folder}/items/{item_id}/update", update_item),
    ]
    for prefix in portal_json.SHARING_PREFIXES:
        for suffix, handler in routes:
            wrapped = _esri(handler)
            app.router.add_route("GET", prefix + suffix, wrapped)
            app.router.add_route("POST", prefix + suffix, wrapped)


def _esri(handler: Handler) -> Handler:
    """Esri error bodies (HTTP 200) even when the portal is mounted without the web middlewares (unit tests)."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        if PARAMS_KEY not in request:
            await load_params(request)
        try:
            return await handler(request)
        except EsriError as err:
            return json_response(err.body(), pretty=output_format(request) == "pjson")
        except ItemNotFound:
            missing = item_missing()
            return json_response(missing.body(), pretty=output_format(request) == "pjson")

    return wrapper


def _render(request: web.Request, data: Any) -> web.Response:
    return json_response(data, pretty=output_format(request) == "pjson")


def base_url(request: web.Request) -> str:
    """Absolute origin for links: config public_url (behind a proxy) or the request's own scheme://host."""
    public = request.app[CONFIG_KEY].public_url
    return public.rstrip("/") if public else str(request.url.origin())


async def caller(request: web.Request) -> Principal | None:
    """Who is calling (the web auth middleware's answer, or the same lookup when it did not run)."""
    if PRINCIPAL_KEY not in request:
        request[PRINCIPAL_KEY] = await identify(request)
    return request[PRINCIPAL_KEY]


async def signed_in(request: web.Request) -> Principal:
    principal = await caller(request)
    if principal is None:
        raise token_required()
    return principal


async def readable_item(request: web.Request, item_id: str) -> Item:
    """The item if the caller may read it (owner or admin), else the portal's 'does not exist' error."""
    principal = await signed_in(request)
    record = await request.app[STORE_KEY].get_item(item_id) if is_item_id(item_id) else None
    if record is None or not principal.can_see(record.owner):
        raise item_missing()
    return record


# --- handlers ------------------------------------------------------------------------------------------


async def rest_root(request: web.Request) -> web.Response:
    return _render(request, portal_json.rest_root())


async def info(request: web.Request) -> web.Response:
    return _render(request, portal_json.info(base_url(request)))


async def portals_self(request: web.Request) -> web.Response:
    return _render(request, portal_json.portal_self(base_url(request), await caller(request)))


async def community_self(request: web.Request) -> web.Response:
    return _render(request, portal_json.user(await signed_in(request)))


async def community_user(request: web.Request) -> web.Response:
    principal = await signed_in(request)
    username = request.match_info["username"]
    if username == principal.username:
        return _render(request, portal_json.user(principal))
    if not principal.is_admin:
        raise forbidden()
    known = await _known_users(request)
    if username not in known:
        raise EsriError(400, f"User '{username}' does not exist.", [])
    return _render(request, portal_json.user(known[username]))


async def _known_users(request: web.Request) -> dict[str, Principal]:
    """Token holders by name (the store's `users()`; accepts Principals or (name, role) pairs)."""
    out: dict[str, Principal] = {}
    for entry in await request.app[STORE_KEY].users():
        if isinstance(entry, Principal):
            out[entry.username] = entry
        elif isinstance(entry, dict):
            out[entry["username"]] = Principal(entry["username"], entry.get("role", "user"))
        else:
            name, role = entry[0], entry[1] if len(entry) > 1 else "user"
            out[name] = Principal(name, role)
    return out


async def content_item(request: web.Request) -> web.Response:
    """The item record (json), or its page for people (f=html): the item, its download and its model card."""
    record = await readable_item(request, request.match_info["item_id"])
    body = portal_json.item(record, base_url(request))
    if output_format(request) == "html":
        card = f"{portal_json.SHARING_PREFIXES[0]}/content/items/{record.id}/card"
        job = await request.app[STORE_KEY].get_job(record.job_id) if record.job_id else None
        return render(
            request,
            body,
            page="item.html",
            context={
                "item": record,
                "token_query": token_query(request),
                "is_model": record.type == ITEM_TYPE_DLPK,
                "task_path": task_path(job.task) if job else None,
                "card": {
                    "metrics": f"{card}/{model_card.METRICS_HTML}",
                    "results": f"{card}/{model_card.SAMPLE_RESULTS}",
                },
                "metrics": {
                    k: v
                    for k, v in (record.properties.get("metrics") or {}).items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                },
            },
        )
    return _render(request, body)


async def content_item_card(request: web.Request) -> web.Response:
    """`content/items/<id>/card/<name>`: model_metrics.html or a ModelCharacteristics picture from the package."""
    record = await readable_item(request, request.match_info["item_id"])
    return await model_card.card_response(Path(record.path), request.match_info["name"])


async def content_item_data(request: web.Request) -> web.StreamResponse:
    """The .dlpk itself, as a download named after the item."""
    record = await readable_item(request, request.match_info["item_id"])
    if not record.path:  # an empty service item that no task has filled yet
        raise EsriError(400, "The item has no data yet.", [f"item {record.id} ({record.type}) holds no file"])
    ascii_name = record.name.encode("ascii", "replace").decode("ascii").replace('"', "_")
    disposition = f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(record.name)}"
    try:
        return web.FileResponse(
            record.path, headers={"Content-Disposition": disposition, "Content-Type": "application/octet-stream"}
        )
    except (FileNotFoundError, OSError):
        raise EsriError(500, "The item's file is missing from the content store.", [record.id]) from None


async def _owned_listing(request: web.Request) -> tuple[Principal, str]:
    principal = await signed_in(request)
    username = request.match_info["username"]
    if not principal.can_see(username):
        raise forbidden()
    return principal, username


async def user_content(request: web.Request) -> web.Response:
    """`content/users/<user>[/<folder>]`: the user's items (root or one folder), paged with start/num."""
    _, username = await _owned_listing(request)
    folder = request.match_info.get("folder")
    records = await request.app[STORE_KEY].list_items(username)
    folders = sorted({r.folder_id for r in records if r.folder_id})
    if folder is not None and folder not in folders:
        raise EsriError(400, f"Folder '{folder}' does not exist for user '{username}'.", [])
    chosen = [r for r in records if r.folder_id == folder]
    chosen.sort(key=lambda r: r.created_ms, reverse=True)
    query = params(request)
    start = _int(query.get("start"), 1, lo=1)
    num = _int(query.get("num"), 10, lo=0, hi=100)
    base = base_url(request)
    return _render(
        request,
        portal_json.user_content(
            username, [portal_json.item(r, base) for r in chosen], folders, folder=folder, start=start, num=num
        ),
    )


async def user_item(request: web.Request) -> web.Response:
    _, username = await _owned_listing(request)
    record = await readable_item(request, request.match_info["item_id"])
    if record.owner != username:
        raise item_missing()
    return _render(
        request, {"item": portal_json.item(record, base_url(request)), "sharing": {"access": "private", "groups": []}}
    )


async def update_item(request: web.Request) -> web.Response:
    """`content/users/<user>/items/<id>/update`: title, description, snippet, tags, typeKeywords, properties.

    `arcgis` calls this after a RA job with `properties={"jobUrl", "jobType", "jobId", "jobStatus"}`.
    """
    if request.method != "POST":
        raise EsriError(405, "This operation requires a POST request.", [])
    _, username = await _owned_listing(request)
    record = await readable_item(request, request.match_info["item_id"])
    if record.owner != username:
        raise item_missing()
    fields = parse_item_update(params(request))
    if fields:
        await request.app[STORE_KEY].update_item(record.id, **fields)
    return _render(request, {"success": True, "id": record.id})


def parse_item_update(form: Any) -> dict[str, Any]:
    """The store fields an item update form asks for; raises EsriError on a malformed value."""
    fields: dict[str, Any] = {}
    for name in UPDATABLE_FIELDS:
        if name in form:
            fields[name] = form[name] or None
    for form_name, field in (("tags", "tags"), ("typeKeywords", "type_keywords")):
        if form.get(form_name):
            fields[field] = _string_list(form[form_name], form_name)
    if form.get("properties"):
        try:
            value = orjson.loads(form["properties"])
        except orjson.JSONDecodeError:
            raise EsriError(400, "Unable to update item.", ["'properties' must be a JSON object"]) from None
        if not isinstance(value, dict):
            raise EsriError(400, "Unable to update item.", ["'properties' must be a JSON object"])
        fields["properties"] = value
    if "title" in fields and not fields["title"]:
        raise EsriError(400, "Unable to update item.", ["'title' cannot be empty"])
    return fields


def _string_list(value: str, name: str) -> list[str]:
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise EsriError(400, "Unable to update item.", [f"'{name}' is not valid JSON"]) from None
        return [str(v).strip() for v in parsed if str(v).strip()]
    return [part.strip() for part in text.split(",") if part.strip()]


def _int(value: str | None, default: int, *, lo: int, hi: int = 2**53) -> int:
    """A whole number clamped to [lo, hi] as the portal does (hi keeps it a JSON-safe 64-bit integer)."""
    try:
        number = int(value) if value not in (None, "") else default
    except ValueError:
        shown = value if value is None or len(value) <= 40 else value[:40] + "..."
        raise EsriError(400, "Invalid or missing input parameters.", [f"not a whole number: {shown!r}"]) from None
    return min(hi, max(lo, number))


async def generate_token(request: web.Request) -> web.Response:
    """Exchange a valid token for a fresh one: `{"token", "expires", "ssl"}` like the portal's generateToken.

    The credential is the caller's own token, or `username` + `password` where the password is a valid
    token of that user (gpjobs stores no passwords). Anonymous mode does not mint tokens from nothing.
    """
    form = params(request)
    store = request.app[STORE_KEY]
    principal: Principal | None = None
    if form.get("username") and form.get("password"):
        principal = await store.authenticate(form["password"])
        if principal is None or principal.username != form["username"]:
            raise EsriError(400, "Unable to generate token.", ["Invalid username or password."])
    elif request_token(request):
        principal = await caller(request)
    if principal is None:
        raise EsriError(
            400,
            "Unable to generate token.",
            ["'username' and 'password' required (the password is a token from `gpjobs token`)."],
        )
    minutes = _int(form.get("expiration"), DEFAULT_TOKEN_MINUTES, lo=1, hi=MAX_TOKEN_MINUTES)
    token = await store.create_token(principal.username, principal.role, ttl_s=minutes * 60)
    return _render(
        request, {"token": token, "expires": now_ms() + minutes * 60_000, "ssl": request.url.scheme == "https"}
    )


# --- what arcgis' raster analysis functions need before and after an inference task -----------------------------

SERVICE_ITEM_TYPES = {
    "imageservice": ITEM_TYPE_IMAGE_SERVICE,
    "image service": ITEM_TYPE_IMAGE_SERVICE,
    "featureservice": ITEM_TYPE_FEATURE_SERVICE,
    "feature service": ITEM_TYPE_FEATURE_SERVICE,
}


def _service_type(value: str | None) -> str:
    kind = SERVICE_ITEM_TYPES.get(str(value or "").strip().lower())
    if kind is None:
        raise EsriError(
            400,
            "Invalid or missing input parameters.",
            [f"type {value!r} is not supported; use imageService or featureService"],
        )
    return kind


async def service_name_available(request: web.Request) -> web.Response:
    """`portals/self/isServiceNameAvailable?name=&type=`: free unless the caller has a service item of that name."""
    principal = await signed_in(request)
    form = params(request)
    name = str(form.get("name") or "").strip()
    if not name:
        raise EsriError(400, "Invalid or missing input parameters.", ["'name' is required"])
    taken = await request.app[STORE_KEY].find_item(principal.username, name, _service_type(form.get("type")))
    return _render(request, {"available": taken is None})


async def create_service(request: web.Request) -> web.Response:
    """`content/users/<u>[/<folder>]/createService`: an empty Image / Feature Service item that an inference task
    then fills (arcgis' classify_pixels / detect_objects create it first and name it in the task's output).
    Nothing is served at its URL: the filled item holds a GeoTIFF or GeoJSON file."""
    if request.method != "POST":
        raise EsriError(405, "This operation requires a POST request.", [])
    principal, username = await _owned_listing(request)
    form = params(request)
    try:
        create = orjson.loads(form.get("createParameters") or "{}")
    except orjson.JSONDecodeError:
        raise EsriError(400, "Unable to create service.", ["'createParameters' must be a JSON object"]) from None
    name = str(create.get("name") or "").strip() if isinstance(create, dict) else ""
    if not name or len(name) > 128 or any(c in name for c in '/\\<>:"|?*'):
        raise EsriError(400, "Unable to create service.", ["createParameters needs a 'name' (letters, digits, _)"])
    kind = _service_type(form.get("outputType"))
    folder = request.match_info.get("folder")
    item = Item(
        id=new_item_id(),
        owner=username,
        title=name,
        name=name,
        type=kind,
        path="",
        type_keywords=["Raster Analysis", "Service"],
        tags=[],
        folder_id=folder if folder else None,
    )
    try:
        item = await request.app[STORE_KEY].create_item(item)
    except ItemExists:
        raise EsriError(400, "Unable to create service.", [f"A {kind} named '{name}' already exists."]) from None
    return _render(
        request,
        {
            "success": True,
            "itemId": item.id,
            "serviceItemId": item.id,
            "name": name,
            "type": kind,
            "serviceurl": None,
            "encodedServiceURL": None,
            "size": -1,
            "isView": False,
        },
    )


async def delete_item(request: web.Request) -> web.Response:
    """`content/users/<u>/items/<id>/delete`: the owner's item and its files (arcgis deletes the empty service
    item of a failed raster analysis job)."""
    if request.method != "POST":
        raise EsriError(405, "This operation requires a POST request.", [])
    _, username = await _owned_listing(request)
    record = await readable_item(request, request.match_info["item_id"])
    if record.owner != username:
        raise item_missing()
    deleted = await request.app[STORE_KEY].delete_item(record.id)
    if deleted is not None and deleted.path:
        folder = Path(deleted.path).parent
        for name in [Path(deleted.path).name, *(deleted.properties.get("resources") or [])]:
            with contextlib.suppress(OSError):
                (folder / Path(str(name)).name).unlink()
    return _render(request, {"success": True, "itemId": record.id})


async def content_item_resource(request: web.Request) -> web.StreamResponse:
    """`content/items/<id>/resources/<name>`: a file published beside the item's data (the GeoPackage beside a
    GeoJSON item, the raster attribute table beside a GeoTIFF). Only the names the item lists are served."""
    record = await readable_item(request, request.match_info["item_id"])
    name = request.match_info["name"]
    if not record.path or name not in (record.properties.get("resources") or []):
        raise EsriError(400, "Resource does not exist or is inaccessible.", [name])
    path = Path(record.path).parent / Path(name).name
    if not path.is_file():
        raise EsriError(500, "The item's resource is missing from the content store.", [record.id, name])
    return web.FileResponse(
        path,
        headers={
            "Content-Disposition": f'attachment; filename="{quote(name)}"',
            "Content-Type": "application/octet-stream",
        },
    )
