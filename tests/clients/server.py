"""A real `gpjobs serve` subprocess on a free loopback port, for the client tests.

Each server gets its own data dir, a file share `share` holding tiny exports written by tests/builders, a CPU
device, an optional self-signed certificate (HTTPS) and optional token auth (a user token is minted in the
store before the server starts). The server log is kept under the data dir and printed when it dies.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gpjobs.commands.cert import CERT_NAME, KEY_NAME, write_self_signed

REPO_ROOT = Path(__file__).resolve().parents[2]
GP_SERVICE = "/arcgis/rest/services/System/RasterAnalysisTools/GPServer"
TASK = GP_SERVICE + "/TrainDeepLearningModel"
SHARE = "share"
USERNAME = "analyst"
START_TIMEOUT_S = 60.0

# A tiny job every client submits: a 2-class Labeled_Tiles export of 8 chips, 32 px, one epoch on RESNET18
# (a fixed learning rate skips the LR finder). Cheap on a 2-core box, yet a real training run end to end.
MODEL_TYPE = "FEATURE_CLASSIFIER"
BACKBONE = "RESNET18"
EXPORT_NAME = "labeled_tiles"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class GpjobsServer:
    """A running server: where it is, who may call it, and where its files are."""

    process: subprocess.Popen
    base_url: str  # scheme://127.0.0.1:port
    data_dir: Path
    share_dir: Path
    log_path: Path
    token: str | None  # the analyst's token (None on an anonymous server)
    cert: Path | None

    @property
    def service_url(self) -> str:
        return self.base_url + GP_SERVICE

    @property
    def task_url(self) -> str:
        return self.base_url + TASK

    @property
    def export_path(self) -> str:
        """The tiny export as clients name it."""
        return f"/fileShares/{SHARE}/{EXPORT_NAME}"

    def ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.cert)) if self.cert else None

    def get_json(self, path: str, **params: str) -> dict:
        """GET `path` with f=json (+ the token), verifying TLS against our own certificate."""
        query = {"f": "json", **params}
        if self.token:
            query["token"] = self.token
        url = self.base_url + path + "?" + "&".join(f"{k}={urllib.request.quote(str(v))}" for k, v in query.items())
        with urllib.request.urlopen(url, context=self.ssl_context(), timeout=30) as resp:
            return json.loads(resp.read())

    def fetch(self, path: str) -> tuple[dict[str, str], bytes]:
        """Raw GET with the token header; returns (headers, body)."""
        request = urllib.request.Request(self.base_url + path)
        if self.token:
            request.add_header("X-Esri-Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, context=self.ssl_context(), timeout=60) as resp:
            return dict(resp.headers), resp.read()

    def job_messages(self, job_id: str | None) -> str:
        """The job's status and messages, for failure reports (what the user would see)."""
        if not job_id:
            return "(no job id)"
        try:
            job = self.get_json(f"{TASK}/jobs/{job_id}")
        except OSError as exc:
            return f"(job {job_id} unreadable: {exc})"
        lines = [f"job {job_id}: {job.get('jobStatus')}"]
        lines += [f"  {m.get('type', '')[len('esriJobMessageType'):]}: {m.get('description')}"
                  for m in job.get("messages", [])]
        return "\n".join(lines)

    def latest_job_id(self) -> str | None:
        """The most recently started job (its work dir under jobs/ is named by its id)."""
        dirs = sorted((self.data_dir / "jobs").glob("j*"), key=lambda d: d.stat().st_mtime)
        return dirs[-1].name if dirs else None

    def diagnose(self, job_id: str | None = None) -> str:
        """Everything needed to say which part broke: the job's messages, the child's log, the server log."""
        job_id = job_id or self.latest_job_id()
        child_logs = sorted((self.data_dir / "jobs" / (job_id or "-") / "logs").glob("*.log"))
        child = child_logs[-1].read_text(errors="replace")[-4000:] if child_logs else "(no child log)"
        return (f"--- job ---\n{self.job_messages(job_id)}\n--- training child log ---\n{child}\n"
                f"--- server log ---\n{self.log_tail(3000)}")

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no server log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def write_exports(share_dir: Path) -> None:
    from tests.builders.exports import write_labeled_tiles

    write_labeled_tiles(share_dir, n=8, size=32, name=EXPORT_NAME)


def _mint_token(db_path: Path) -> str:
    from gpjobs.store import Store

    async def mint() -> str:
        store = await Store.open(db_path)
        try:
            return await store.create_token(USERNAME, "user")
        finally:
            await store.close()

    return asyncio.run(mint())


def start_server(root: Path, *, tls: bool, auth: bool) -> GpjobsServer:
    """Start `gpjobs serve` under `root`; returns once the GP service answers. Caller must `.stop()` it."""
    data_dir, share_dir = root / "var", root / "share"
    data_dir.mkdir(parents=True)
    share_dir.mkdir()
    write_exports(share_dir)
    port = free_port()
    cert = key = None
    if tls:
        write_self_signed(root / "tls", ["127.0.0.1", "localhost"])
        cert, key = root / "tls" / CERT_NAME, root / "tls" / KEY_NAME
    lines = [
        'host = "127.0.0.1"', f"port = {port}", f'data_dir = "{data_dir}"', 'devices = ["cpu"]',
        "max_attempts = 1", 'missing_weights = "random"',
        *([f'tls_cert = "{cert}"', f'tls_key = "{key}"'] if tls else []),
        "[file_shares]", f'{SHARE} = "{share_dir}"',
        "[auth]", f"anonymous = {'false' if auth else 'true'}",
    ]
    config_path = root / "gpjobs.toml"
    config_path.write_text("\n".join(lines) + "\n")
    token = _mint_token(data_dir / "gpjobs.sqlite3") if auth else None
    env = {**os.environ, "GPJOBS_CONFIG": str(config_path), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "gpjobs.cli", "serve"], cwd=REPO_ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = GpjobsServer(process, f"{'https' if tls else 'http'}://127.0.0.1:{port}", data_dir, share_dir,
                          log_path, token, cert)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"gpjobs serve exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if "tasks" in server.get_json(GP_SERVICE):
                return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"gpjobs serve did not answer within {START_TIMEOUT_S:.0f} s:\n{server.log_tail()}")
        time.sleep(0.3)


def is_item_reference(value: object) -> bool:
    """The out_item value of a published item: `{"id"}` (Esri's script) optionally with the same `itemId`
    (which arcgis' RA post-processing also understands), and never a `url` key (arcgis would return just it)."""
    return (isinstance(value, dict) and isinstance(value.get("id"), str) and len(value["id"]) == 32
            and value.get("itemId", value["id"]) == value["id"] and "url" not in value
            and set(value) <= {"id", "itemId"})
