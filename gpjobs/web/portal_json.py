"""Portal JSON shapes (pure functions): item, user, portals/self, info — what the real clients read.

Field sets: protocol.md §5.3 (item), §10 (what `arcgis.gis.GIS` reads from portals/self and
community/users). Kept free of aiohttp so the shapes can be pinned by plain unit tests.
"""

from __future__ import annotations

import uuid
from typing import Any

from gpjobs.domain import Item, Principal

PORTAL_VERSION = "11.3"  # the rest root's currentVersion; GIS.version parses it into [11, 3]
PORTAL_NAME = "gpjobs"
GP_SERVICE_PATH = "/arcgis/rest/services/System/RasterAnalysisTools/GPServer"
SHARING_PREFIXES = ("/sharing/rest", "/portal/sharing/rest")
# A fixed organisation id: clients only need one to exist (GIS.properties.id -> "is an org").
ORG_ID = uuid.uuid5(uuid.NAMESPACE_URL, "gpjobs-portal").hex


def rest_root() -> dict[str, Any]:
    return {"currentVersion": PORTAL_VERSION}


def info(base_url: str) -> dict[str, Any]:
    """`sharing/rest/info`.

    Deliberately without `currentVersion` or `folders`: arcgis' product sniffing (`Connection._check_product`)
    calls anything that answers those "SERVER", and a GIS that is not a PORTAL cannot run train_model.
    """
    return {
        "owningSystemUrl": f"{base_url}/portal",
        "authInfo": {"tokenServicesUrl": f"{base_url}/portal/sharing/rest/generateToken", "isTokenBasedSecurity": True},
    }


def user(principal: Principal, *, created_ms: int = 0) -> dict[str, Any]:
    """A portal user record for a gpjobs principal (users exist only as token holders)."""
    admin = principal.is_admin
    return {
        "username": principal.username,
        "fullName": principal.username,
        "firstName": principal.username,
        "lastName": "",
        "email": None,
        "description": None,
        "orgId": ORG_ID,
        "role": "org_admin" if admin else "org_user",
        "roleId": "org_admin" if admin else "org_user",
        "userType": "creatorUT",
        "userLicenseTypeId": "creatorUT",
        "privileges": (
            [
                "portal:admin:viewItems",
                "portal:admin:updateItems",
                "portal:user:createItem",
                "premium:user:rasteranalysis",
            ]
            if admin
            else ["portal:user:createItem", "premium:user:rasteranalysis"]
        ),
        "level": "2",
        "provider": "arcgis",
        "access": "private",
        "units": "metric",
        "culture": "en-us",
        "region": None,
        "groups": [],
        "tags": [],
        "created": created_ms,
        "modified": created_ms,
        "disabled": False,
    }


def portal_self(base_url: str, principal: Principal | None) -> dict[str, Any]:
    """`portals/self`: an Enterprise portal (isPortal, single tenant) whose raster analysis server is us."""
    body: dict[str, Any] = {
        "id": ORG_ID,
        "name": PORTAL_NAME,
        "portalName": PORTAL_NAME,
        "isPortal": True,
        "portalMode": "singletenant",
        "portalHostname": base_url.split("://", 1)[-1] + "/portal",
        "currentVersion": PORTAL_VERSION,
        "allSSL": base_url.startswith("https://"),
        "httpPort": 80,
        "httpsPort": 443,
        "supportsOAuth": False,
        "culture": "en-us",
        "units": "metric",
        "helperServices": {
            "rasterAnalytics": {"url": f"{base_url}{GP_SERVICE_PATH}"},
        },
    }
    if principal is not None:
        body["user"] = user(principal)
    return body


def item(record: Item, base_url: str) -> dict[str, Any]:
    """The portal item JSON of a published model (protocol.md §5.3)."""
    return {
        "id": record.id,
        "owner": record.owner,
        "orgId": ORG_ID,
        "created": record.created_ms,
        "modified": record.modified_ms,
        "name": record.name,
        "title": record.title,
        "type": record.type,
        "typeKeywords": list(record.type_keywords),
        "tags": list(record.tags),
        "snippet": record.snippet,
        "description": record.description,
        "url": None,  # file items have no service url; the file is at .../data
        "access": "private",
        "size": record.size,
        "numViews": 0,
        "culture": "en-us",
        "extent": [],
        "spatialReference": None,
        "categories": [],
        "protected": False,
        "ownerFolder": record.folder_id,
        "properties": dict(record.properties),
        "dataUrl": f"{base_url}/sharing/rest/content/items/{record.id}/data",
    }


def user_content(
    username: str, items: list[dict[str, Any]], folders: list[str], *, folder: str | None, start: int, num: int
) -> dict[str, Any]:
    """`content/users/<user>[/<folder>]`: one page of the user's items, 1-based `start` like the portal."""
    page = items[start - 1 : start - 1 + num]
    next_start = start + len(page) if start - 1 + num < len(items) else -1
    body: dict[str, Any] = {
        "username": username,
        "total": len(items),
        "start": start,
        "num": len(page),
        "nextStart": next_start,
        "currentFolder": {"id": folder, "title": folder, "username": username} if folder else None,
        "items": page,
    }
    if folder is None:
        body["folders"] = [{"id": f, "title": f, "username": username} for f in folders]
    return body
