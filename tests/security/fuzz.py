"""A seeded fuzzer of every route and parameter of a running gpjobs server, over raw loopback sockets.

`FuzzRequests(seed, names)` draws malformed requests: every route (GP task and jobs, admin, both portal
prefixes, health, unknown paths), every method, every parameter with hostile values (huge and non-finite
numbers, nesting bombs, traversal paths, control and non-UTF-8 bytes, long strings), broken bodies
(charsets, multipart, Content-Encoding, sizes) and bad tokens, plus a share of valid requests so that the
paths behind the checks run too. `check_response` says what is wrong with one answer: a 5xx, a traceback
in the body, or (under the Esri URL spaces) anything but HTTP 200 with JSON that is either a result or
`{"error": {"code", "message", "details"}}` with a code other than 500.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

TASK = "/arcgis/rest/services/System/RasterAnalysisTools/GPServer/TrainDeepLearningModel"
ADMIN = "/arcgis/admin/services/System/RasterAnalysisTools.GPServer/jobs"
PORTALS = ("/sharing/rest", "/portal/sharing/rest")
ESRI_SPACES = ("/arcgis/", "/sharing/", "/portal/")
SUBMIT_FIELDS = (
    "in_folder",
    "output_name",
    "model_type",
    "arguments",
    "batch_size",
    "max_epochs",
    "learning_rate",
    "backbone_model",
    "validation_percent",
    "pretrained_model",
    "stop_training",
    "overwrite_model",
    "context",
    "freeze_model",
)
ADMIN_FIELDS = ("jobStatus", "userName", "modelType", "startTime", "endTime", "number", "start", "sort")
PORTAL_FIELDS = (
    "start",
    "num",
    "expiration",
    "username",
    "password",
    "title",
    "tags",
    "typeKeywords",
    "properties",
    "description",
    "snippet",
    "referer",
    "client",
)
COMMON_FIELDS = ("f", "token", "returnMessages")


@dataclass
class Names:
    """What the server holds, so that some requests name real things (and get past the first check)."""

    export: str  # an in_folder that is a valid export
    admin_token: str
    user_token: str
    username: str
    job_ids: list[str] = field(default_factory=list)  # accepted jobs (grows during the run)
    item_ids: list[str] = field(default_factory=list)


@dataclass
class Request:
    method: str
    target: bytes  # path + query, raw bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    not_http: bool = False  # deliberately not valid HTTP

    @property
    def protocol_error(self) -> bool:
        """Refused by aiohttp's parser before any handler runs (answered 400 in plain text, or the connection
        closed): not valid HTTP, a request line or header over its 8190-byte limit, a control byte in a header."""
        bad_byte = any(c < 32 and c != 9 or c == 127 for _, v in self.headers for c in v)
        return (
            self.not_http or len(self.target) > 8000 or bad_byte or any(len(k) + len(v) > 8000 for k, v in self.headers)
        )

    @property
    def path(self) -> str:
        return self.target.split(b"?", 1)[0].decode("latin-1")

    def wire(self) -> bytes:
        lines = [
            self.method.encode("latin-1") + b" " + self.target + b" HTTP/1.1",
            b"Host: 127.0.0.1",
            b"Connection: close",
        ]
        names = {k.lower() for k, _ in self.headers}
        if b"content-length" not in names:
            lines.append(b"Content-Length: " + str(len(self.body)).encode())
        lines += [k + b": " + v for k, v in self.headers]
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


class FuzzRequests:
    """Seeded malformed requests across every route and parameter."""

    def __init__(self, seed: int, names: Names) -> None:
        self.rng = random.Random(seed)
        self.names = names

    # --- values -------------------------------------------------------------------------------------

    def text(self) -> str:
        """A hostile (or plain) parameter value."""
        r = self.rng
        choice = r.randrange(24)
        if choice == 0:
            return ""
        if choice == 1:
            return r.choice(["null", "None", "undefined", " ", "\t", "true", "false", "0", "-0"])
        if choice == 2:
            return r.choice(
                [
                    "9" * r.randint(19, 40),
                    "-" + "9" * r.randint(19, 40),
                    "9" * 5000,
                    str(2**63),
                    str(-(2**63) - 1),
                    "1" + "0" * 400,
                ]
            )
        if choice == 3:
            return r.choice(
                [
                    "1e309",
                    "-1e309",
                    "inf",
                    "-Infinity",
                    "nan",
                    "NaN",
                    "1e-400",
                    "0x10",
                    "1_000",
                    "4.5",
                    "-1",
                    "1e30",
                    "+7",
                    "٣",
                ]
            )
        if choice == 4:
            n = r.choice([40, 200, 5000, 100_000])
            return r.choice(["[" * n, '{"a":' * n + "1" + "}" * n, "[" * n + "]" * n])
        if choice == 5:
            return r.choice(
                [
                    "{",
                    '{"a":',
                    "[1,2",
                    '{"chip_size": }',
                    "{'a': 1}",
                    '{"a": NaN}',
                    '{"a": 1e999}',
                    '{"a": -Infinity}',
                    "[]",
                    "{}",
                    '"str"',
                    "123",
                ]
            )
        if choice == 6:
            return r.choice(
                [
                    "/fileShares/default/../../etc",
                    "/fileShares/default/%2e%2e/%2e%2e/etc",
                    "/fileShares/default/%252e%252e/x",
                    "..\\..\\windows",
                    "/etc/passwd",
                    "\\\\server\\share\\x",
                    "//server/share/x",
                    "/fileShares/nope/x",
                    "/cloudStores/a/b",
                    "/fileShares/default/" + "a/" * 300,
                    "/fileShares/default/\x00x",
                    "/rasterStores/default/x",
                    "/fileShares/",
                    "file:///etc/passwd",
                    "~/x",
                ]
            )
        if choice == 7:
            return "".join(
                chr(r.choice([0, 1, 7, 27, 127, 0x85, 0x2028, 0x202E, 0xFEFF, 0xFFFD, 0x1F600, 0x10FFFF]))
                for _ in range(r.randint(1, 20))
            )
        if choice == 8:
            return "x" * r.choice([129, 1000, 9000, 60_000])
        if choice == 9:
            return r.choice(
                [
                    "UNET",
                    "unet",
                    " UNET ",
                    "FEATURE_CLASSIFIER",
                    "NOPE",
                    "IMAGECAPTIONER",
                    "YOLOV3",
                    "MASKRCNN",
                    "CYCLEGAN",
                    "SSD",
                    "RESNET18",
                    "DARKNET53",
                    "MOBILENET_V2",
                ]
            )
        if choice == 10:
            return json.dumps({"uri": self.path_value()})
        if choice == 11:
            return json.dumps({"uris": [self.path_value() for _ in range(r.randint(0, 3))]})
        if choice == 12:
            return json.dumps(
                {
                    "name": r.choice(["m", "a/b", "..", "", "x" * 200, "ok_name", "<script>"]),
                    "folderId": r.choice([None, "", "zz", "0" * 32, 5]),
                }
            )
        if choice == 13:
            return json.dumps(self.arguments())
        if choice == 14:
            return r.choice(["chip_size 224;batch 4", "chip_size;x", "a 'b'", ";;;", "chip_size 1e999"])
        if choice == 15:
            return json.dumps(
                {
                    "processorType": r.choice(["GPU", "CPU", "TPU", 1, None, ""]),
                    "parallelProcessingFactor": r.choice(["50%", "-1", "x", 2, None]),
                }
            )
        if choice == 16:
            return json.dumps({"itemId": r.choice(["0" * 32, "z" * 32, 5, "", None])})
        if choice == 17:
            return r.choice(["esriJobSucceeded", "Failed,,x", "created_desc", "oldest", "x" * 50, "Succeeded,Nope"])
        if choice == 18:
            return r.choice(self.names.job_ids or ["j" + "0" * 32])
        if choice == 19:
            return r.choice(
                [
                    "<script>alert(1)</script>",
                    "{{7*7}}",
                    "${jndi:ldap://x}",
                    "' OR 1=1 --",
                    "%s%s%s%n",
                    "\r\nX-Injected: 1",
                ]
            )
        if choice == 20:
            return str(r.randint(-10, 10 ** r.randint(1, 25)))
        if choice == 21:
            return r.choice(["[1, 2, 3, 6]", "[0, 1, 2]", "[-1]", "[1e999]", "[[[]]]", "1,2,x"])
        if choice == 22:
            return self.names.export
        return "".join(r.choice("abcXYZ019 _-./\\%&=+?#") for _ in range(r.randint(1, 30)))

    def path_value(self) -> str:
        return self.rng.choice(
            [
                self.names.export,
                self.names.export + "/..",
                self.names.export + "/images",
                "/fileShares/default/absent",
                "/fileShares/default",
                "/fileShares/default/models/m",
                "/fileShares/default/models/m.dlpk",
                "/etc",
                self.text()[:200],
            ]
        )

    def arguments(self) -> dict[str, Any]:
        from gpjobs.catalog import MODEL_TYPES

        r = self.rng
        info = r.choice(list(MODEL_TYPES.values()))
        names = list(info.arguments) + ["nope", "CHIP_SIZE", ""]
        values: list[Any] = [
            None,
            "",
            0,
            -1,
            1,
            2.5,
            10**30,
            float("inf"),
            "1e999",
            "nan",
            True,
            [],
            {},
            [1, 2],
            "[1, 2, 3]",
            "x" * 100,
            224,
            "224",
        ]
        return {r.choice(names): r.choice(values) for _ in range(r.randint(0, 4))}

    # --- requests ------------------------------------------------------------------------------------

    def job_id(self) -> str:
        r = self.rng
        if self.names.job_ids and r.random() < 0.6:
            return r.choice(self.names.job_ids)
        return r.choice(
            [
                "j" + "0" * 32,
                "j" + "f" * 32,
                "J" + "0" * 32,
                "x",
                "..",
                "%2e%2e",
                "j" * 500,
                quote("jé" + "0" * 31),
                "j0",
                "%00",
            ]
        )

    def item_id(self) -> str:
        if self.names.item_ids and self.rng.random() < 0.5:
            return self.rng.choice(self.names.item_ids)
        return self.rng.choice(["0" * 32, "z" * 32, "..", "%2e%2e%2f", "a" * 300])

    def route(self) -> tuple[str, tuple[str, ...]]:
        """(path, the parameters it reads)."""
        r = self.rng
        job = f"{TASK}/jobs/{self.job_id()}"
        portal = r.choice(PORTALS)
        user = r.choice([self.names.username, "root", "nobody", "..", "a" * 200, quote("ü")])
        item = self.item_id()
        folder = r.choice(["0" * 32, "x", "..", quote("ü")])
        routes = [
            ("/arcgis/rest/info", ()),
            ("/arcgis/rest/services", ()),
            ("/arcgis/rest/services/", ()),
            ("/arcgis/rest/services/System", ()),
            ("/arcgis/rest/services/System/RasterAnalysisTools/GPServer", ()),
            (TASK, ()),
            (TASK + "/submitJob", SUBMIT_FIELDS),
            (TASK + "/submitJob", SUBMIT_FIELDS),
            (TASK + "/submitJob", SUBMIT_FIELDS),
            (TASK + "/execute", SUBMIT_FIELDS),
            (job, ()),
            (job + "/cancel", ()),
            (job + "/results", ()),
            (job + "/results/" + r.choice(["out_item", "x", ".."]), ()),
            (job + "/inputs", ()),
            (job + "/inputs/" + r.choice(SUBMIT_FIELDS + ("x",)), ()),
            (ADMIN, ADMIN_FIELDS),
            (ADMIN + "/query", ADMIN_FIELDS),
            (f"{ADMIN}/{self.job_id()}", ()),
            (f"{ADMIN}/{self.job_id()}/cancel", ()),
            (f"{ADMIN}/{self.job_id()}/delete", ()),
            (portal, ()),
            (portal + "/", ()),
            (portal + "/info", ()),
            (portal + "/generateToken", PORTAL_FIELDS),
            (portal + "/portals/self", ()),
            (portal + "/community/self", ()),
            (f"{portal}/community/users/{user}", ()),
            (f"{portal}/content/items/{item}", ()),
            (f"{portal}/content/items/{item}/data", ()),
            (f"{portal}/content/users/{user}", PORTAL_FIELDS),
            (f"{portal}/content/users/{user}/{folder}", PORTAL_FIELDS),
            (f"{portal}/content/users/{user}/items/{item}", ()),
            (f"{portal}/content/users/{user}/items/{item}/update", PORTAL_FIELDS),
            (f"{portal}/content/users/{user}/{folder}/items/{item}/update", PORTAL_FIELDS),
            ("/health", ()),
            ("/arcgis/rest/services/" + quote(self.text()[:50], safe=""), ()),
            ("/nothing/here", ()),
            ("/arcgis/admin/" + r.choice(["", "x", "services"]), ()),
        ]
        return r.choice(routes)

    def fields(self, names: tuple[str, ...]) -> list[tuple[str, str]]:
        r = self.rng
        if names == SUBMIT_FIELDS and r.random() < 0.3:  # a valid submit, perhaps with one bad field
            valid = {
                "in_folder": self.names.export,
                "output_name": json.dumps({"name": f"m{r.randrange(10**6)}"}),
                "model_type": "UNET",
                "backbone_model": "RESNET18",
                "arguments": '{"chip_size": "32"}',
                "max_epochs": "1",
                "batch_size": "2",
            }
            if r.random() < 0.5:
                valid[r.choice(SUBMIT_FIELDS)] = self.text()
            return [*valid.items(), ("f", "json")]
        chosen = r.sample(names, k=min(len(names), r.randint(0, 5))) if names else []
        chosen += r.sample(COMMON_FIELDS, k=r.randint(0, 2))
        if r.random() < 0.1:
            chosen.append(self.text()[:30] or "x")  # an unknown parameter name
        out = [(name, self.text()) for name in chosen]
        if r.random() < 0.8:
            out.append(("f", r.choice(["json", "json", "pjson", "html", "JSON", "kmz", "", "json&f=html"])))
        return out

    def auth(self) -> list[tuple[bytes, bytes]]:
        r = self.rng
        names = self.names
        choice = r.randrange(12)
        header = r.choice([b"X-Esri-Authorization", b"Authorization"])
        if choice < 5:
            return [(header, b"Bearer " + names.admin_token.encode())]
        if choice < 8:
            return [(header, b"Bearer " + names.user_token.encode())]
        if choice == 8:
            return []
        return [
            (
                header,
                r.choice(
                    [
                        b"Bearer",
                        b"Bearer ",
                        b"Basic abc",
                        b"Bearer \xff\xfe\x80",
                        b"Bearer gpj_\xc3\xa9",
                        b"Bearer " + b"a" * 6000,
                        b"bearer " + names.admin_token.encode().upper(),
                        b"Bearer gpj_" + bytes(r.randrange(33, 127) for _ in range(43)),
                    ]
                ),
            )
        ]

    def next(self) -> Request:
        r = self.rng
        if r.random() < 0.02:
            return self.not_http()
        path, names = self.route()
        method = r.choices(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"], [40, 50, 2, 2, 2, 2, 2])[0]
        fields = self.fields(names)
        headers = self.auth()
        token_field = [("token", r.choice([self.names.admin_token, "junk", ""]))] if r.random() < 0.1 else []
        if method == "GET" or r.random() < 0.15:
            query = urlencode(fields + token_field)
            if r.random() < 0.1:
                query += "&" + r.choice(["%ff%fe=1", "a=%", "a=%zz", "=x", "&&&", "a" * 3000 + "=1", "f"])
            return Request(method, (path + ("?" + query if query else "")).encode(), headers)
        body, content = self.body(fields + token_field)
        return Request(method, path.encode(), headers + content, body)

    def body(self, fields: list[tuple[str, str]]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        r = self.rng
        form = urlencode(fields).encode()
        urlenc = (b"Content-Type", b"application/x-www-form-urlencoded")
        choice = r.randrange(20)
        if choice < 11:
            return form, [urlenc]
        if choice == 11:
            return form + b"&x=\xff\xfe", [urlenc]
        if choice == 12:
            return form, [
                (
                    b"Content-Type",
                    b"application/x-www-form-urlencoded; charset="
                    + r.choice([b"nope", b"utf-16", b"latin-1", b"utf-32-be", b"\xff"]),
                )
            ]
        if choice == 13:
            return self.multipart(fields)
        if choice == 14:
            coding = r.choice([b"gzip", b"deflate", b"br", b"gzip, deflate", b"identity", b"x-gzip"])
            good = gzip.compress(form) if coding in (b"gzip", b"x-gzip") else zlib.compress(form)
            return r.choice([good, good[:-4], b"junk" * r.randint(1, 50), b""]), [urlenc, (b"Content-Encoding", coding)]
        if choice == 15:
            return json.dumps(dict(fields)).encode(), [(b"Content-Type", b"application/json")]
        if choice == 16:
            return form, []  # no Content-Type at all
        if choice == 17:
            return b"a=" + b"x" * r.choice([900_000, 1_100_000]), [urlenc]  # about the size limit
        if choice == 18:
            return gzip.compress(b"a=" + b"b" * 3_000_000), [urlenc, (b"Content-Encoding", b"gzip")]  # a bomb
        return form, [
            (
                b"Content-Type",
                r.choice(
                    [
                        b"text/plain",
                        b"multipart/mixed; boundary=x",
                        b"x/y",
                        b"application/x-www-form-urlencoded;;;",
                        b"\x00",
                    ]
                ),
            )
        ]

    def multipart(self, fields: list[tuple[str, str]]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        r = self.rng
        boundary = r.choice([b"zzBOUNDARYzz", b"b" * 80, b"\xff", b"a b"])
        parts = []
        for name, value in fields:
            head = b'Content-Disposition: form-data; name="' + name.encode("utf-8", "replace") + b'"'
            if r.random() < 0.2:
                head += b"\r\nContent-Type: text/plain; charset=" + r.choice([b"nope", b"utf-8", b"latin-1"])
            if r.random() < 0.1:
                head += b"\r\nContent-Transfer-Encoding: " + r.choice([b"base64", b"quoted-printable", b"x"])
            if r.random() < 0.05:
                head += b'; filename="a.txt"'
            parts.append(b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + value.encode("utf-8", "surrogatepass"))
        body = b"\r\n".join(parts) + b"\r\n--" + boundary + b"--\r\n"
        if r.random() < 0.3:
            body = body[: r.randrange(len(body) + 1)]  # truncated
        ctype = b"multipart/form-data" + r.choice([b"; boundary=" + boundary, b"", b"; boundary=other"])
        return body, [(b"Content-Type", ctype)]

    def not_http(self) -> Request:
        """A request aiohttp's parser refuses before any handler (answered 400, logged as one line)."""
        r = self.rng
        target = TASK.encode() + r.choice([b"?x=\xff", b"?a=b c", b"\x00", b"?\x7f"])
        return Request("GET", target, [], not_http=True)


# --- sending and judging -----------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


async def send(port: int, request: Request, timeout: float = 30.0) -> Response | None:
    """The answer, or None when the server closed the connection without one (only a protocol error may)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = b""
    try:
        writer.write(request.wire())
        await writer.drain()
        while chunk := await asyncio.wait_for(reader.read(1 << 16), timeout):
            raw += chunk
    except ConnectionResetError:  # refused before the request was read whole: keep what was answered
        pass
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head:
        return None
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return Response(int(status_line.split()[1]), headers, body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + rest[:size], rest[size + 2 :]
    return out


def check_response(request: Request, response: Response) -> str | None:
    """What is wrong with this answer (None: nothing)."""
    if response.status >= 500:
        return f"HTTP {response.status}"
    if b"Traceback" in response.body:
        return "a traceback in the body"
    if (
        request.protocol_error
        and response.status == 400
        and response.headers.get("content-type", "").startswith("text/plain")
    ):
        return None  # aiohttp's parser refused it before any handler (a request at a limit may still get through)
    if not request.path.startswith(ESRI_SPACES):
        return None
    ctype = response.headers.get("content-type", "")
    if ctype.startswith("text/html"):  # f=html pages for people carry real status codes
        return None
    if response.status in (301, 302, 303, 307, 308):  # submitJob and cancel send a person on to the job page
        asked = (request.target + b"&" + request.body).decode("latin-1").lower()
        return None if "f=html" in asked else f"redirect {response.status}"
    if response.status != 200:
        return f"HTTP {response.status} under an Esri URL space"
    if not ctype.startswith("application/json"):
        return f"Content-Type {ctype!r}"
    if request.method == "HEAD":
        return None
    try:
        body = json.loads(response.body)
    except ValueError:
        return "a body that is not JSON"
    if isinstance(body, dict) and "error" in body:
        error = body["error"]
        if not (
            isinstance(error, dict)
            and set(error) == {"code", "message", "details"}
            and isinstance(error["code"], int)
            and isinstance(error["message"], str)
            and isinstance(error["details"], list)
            and all(isinstance(d, str) for d in error["details"])
        ):
            return f"an 'error' key outside the Esri error shape: {str(error)[:200]}"
        if error["code"] >= 500:
            return f"error code {error['code']}: {error['message']} {error['details']}"
    return None
