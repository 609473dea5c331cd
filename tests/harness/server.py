"""A real `gpjobs serve` in a subprocess, for the acceptance and client tests.

    server = GpjobsServer(tmp_path, trainer="fake").start()      # or trainer="real", tls=True, auth=True
    job_id = server.submit(in_folder="/fileShares/default/x", model_type="UNET")["jobId"]
    info = server.wait(job_id)                                     # polls until a terminal status
    server.kill(); server.start()                                  # kill -9, then restart over the same data
    server.stop()                                                  # SIGTERM (kill after 20 s); idempotent

Layout under `root`: var/ (data dir), share/ (the file share `default`, unless `shares` names others),
tls/ (the self-signed certificate when tls=True), gpjobs.toml (the config file it runs with) and server.log
(its stdout and stderr, kept across restarts). It listens on a free loopback port (port 0); the URL comes
from its "serving on" line. With auth=True a user token for USERNAME is minted before the first start.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Literal

from gpjobs.commands.cert import CERT_NAME, KEY_NAME, write_self_signed

REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE_TRAINER_COMMAND = [sys.executable, str(REPO_ROOT / "tests" / "fakes" / "fake_trainer.py")]  # no torch
TRAINER_COMMANDS = {"fake": FAKE_TRAINER_COMMAND, "real": [sys.executable, "-m", "gpjobs.training"]}
GP_SERVICE = "/arcgis/rest/services/System/RasterAnalysisTools/GPServer"
TASK = GP_SERVICE + "/TrainDeepLearningModel"
TERMINAL = frozenset({"esriJobSucceeded", "esriJobFailed", "esriJobTimedOut", "esriJobCancelled"})
USERNAME = "analyst"
START_TIMEOUT_S = 60.0


class GpjobsServer:
    """`python -m gpjobs.cli serve` over `root`, in its own session (a kill -9 spares its training children)."""

    def __init__(
        self,
        root: Path,
        *,
        trainer: Literal["fake", "real"] = "fake",
        shares: dict[str, Path] | None = None,
        tls: bool = False,
        auth: bool = False,
        settings: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        raster_stores: dict[str, Path] | None = None,
    ) -> None:
        """`settings`: config-file keys over the defaults (cpu slot, no retry backoff, fast progress flush);
        `env`: extra environment for the server and its children (e.g. GPJOBS_FAKE_BEHAVIOUR);
        `raster_stores`: registered raster stores (name -> folder), besides the file shares."""
        self.root = root
        self.data_dir = root / "var"
        self.shares = shares if shares is not None else {"default": root / "share"}
        self.raster_stores = dict(raster_stores or {})
        self.cert: Path | None = root / "tls" / CERT_NAME if tls else None
        self.auth = auth
        self.settings = {
            "host": "127.0.0.1",
            "port": 0,
            "data_dir": str(self.data_dir),
            "devices": ["cpu"],
            "trainer_command": TRAINER_COMMANDS[trainer],
            "retry_backoff_s": 0,
            "progress_flush_s": 0.2,
            "missing_weights": "random",
            **(settings or {}),
        }
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
            "GPJOBS_CONFIG": str(root / "gpjobs.toml"),
        }
        self.log_path = root / "server.log"
        self.process: subprocess.Popen | None = None
        self.token: str | None = None  # USERNAME's token when auth=True
        self.base_url = ""  # scheme://127.0.0.1:port once started

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_S) -> GpjobsServer:
        """Starts (or restarts) the server; returns once it listens. The caller stops it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for share in (*self.shares.values(), *self.raster_stores.values()):
            share.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if self.auth and self.token is None:
            self.token = _mint_token(self.data_dir / "gpjobs.sqlite3")
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gpjobs.cli", "serve"],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while (url := self._serving_url(offset)) is None:
            if self.process.poll() is not None:
                raise RuntimeError(f"gpjobs serve exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"gpjobs serve did not listen within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)
        self.base_url = url.split("/arcgis/", 1)[0]
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """kill -9: no cleanup of any kind."""
        if self.running:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        """A graceful stop (SIGTERM); returns the server's exit code."""
        assert self.process is not None, "never started"
        if self.running:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is still running after 20 s; does nothing when it is not running."""
        if self.running:
            try:
                self.terminate(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    # --- HTTP ----------------------------------------------------------------------------------------

    @property
    def service_url(self) -> str:
        return self.base_url + GP_SERVICE

    @property
    def task_url(self) -> str:
        return self.base_url + TASK

    def ssl_context(self) -> ssl.SSLContext | None:
        """Verifies TLS against the server's own certificate."""
        return ssl.create_default_context(cafile=str(self.cert)) if self.cert else None

    def get_json(self, path: str, timeout: float = 30.0, **params: str) -> Any:
        """GET `path` with f=json (and the token)."""
        query = urllib.parse.urlencode({"f": "json", **params, **({"token": self.token} if self.token else {})})
        with urllib.request.urlopen(
            f"{self.base_url}{path}?{query}", context=self.ssl_context(), timeout=timeout
        ) as resp:
            return json.loads(resp.read())

    def post_json(self, path: str, data: dict[str, str] | None = None, timeout: float = 30.0) -> Any:
        """POST a form to `path` with f=json (and the token)."""
        form = {"f": "json", **(data or {}), **({"token": self.token} if self.token else {})}
        with urllib.request.urlopen(
            self.base_url + path,
            data=urllib.parse.urlencode(form).encode(),
            context=self.ssl_context(),
            timeout=timeout,
        ) as resp:
            return json.loads(resp.read())

    def fetch(self, path: str) -> tuple[dict[str, str], bytes]:
        """Raw GET with the token header; returns (headers, body)."""
        request = urllib.request.Request(self.base_url + path)
        if self.token:
            request.add_header("X-Esri-Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, context=self.ssl_context(), timeout=60) as resp:
            return dict(resp.headers), resp.read()

    def submit(self, **fields: str) -> dict[str, Any]:
        return self.post_json(f"{TASK}/submitJob", fields)

    def submit_to(self, task: str, **fields: str) -> dict[str, Any]:
        """submitJob of another task of the service (ClassifyPixelsUsingDeepLearning, ...)."""
        return self.post_json(f"{GP_SERVICE}/{task}/submitJob", fields)

    def job(self, job_id: str, task: str | None = None) -> dict[str, Any]:
        """The job resource, under its task (default: the task its work folder's spec names, else training)."""
        return self.get_json(f"{GP_SERVICE}/{task or self.task_of(job_id)}/jobs/{job_id}")

    def task_of(self, job_id: str) -> str:
        try:
            return json.loads((self.data_dir / "jobs" / job_id / "spec.json").read_text())["task"]
        except (OSError, ValueError, KeyError):
            return "TrainDeepLearningModel"

    def wait(
        self,
        job_id: str,
        statuses: frozenset[str] | set[str] = TERMINAL,
        timeout: float = 60.0,
        task: str | None = None,
    ) -> dict[str, Any]:
        """Polls the job (of `task`) until its status is one of `statuses`."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id, task)
            if info.get("jobStatus") in statuses:
                return info
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {info}\n{self.diagnose(job_id)}")
            time.sleep(0.1)

    # --- diagnosis -----------------------------------------------------------------------------------

    def job_messages(self, job_id: str | None) -> str:
        """The job's status and messages, for failure reports (what the user would see)."""
        if not job_id:
            return "(no job id)"
        try:
            job = self.job(job_id)
        except OSError as exc:
            return f"(job {job_id} unreadable: {exc})"
        lines = [f"job {job_id}: {job.get('jobStatus')}"]
        lines += [
            f"  {m.get('type', '')[len('esriJobMessageType') :]}: {m.get('description')}"
            for m in job.get("messages", [])
        ]
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
        return (
            f"--- job ---\n{self.job_messages(job_id)}\n--- training child log ---\n{child}\n"
            f"--- server log ---\n{self.log_tail(3000)}"
        )

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no server log)"

    # --- internals -----------------------------------------------------------------------------------

    def _write_config(self) -> None:
        lines = [f"{key} = {json.dumps(value)}" for key, value in self.settings.items()]
        if self.cert is not None:
            if not self.cert.exists():
                write_self_signed(self.cert.parent, ["127.0.0.1", "localhost"])
            lines += [
                f"tls_cert = {json.dumps(str(self.cert))}",
                f"tls_key = {json.dumps(str(self.cert.parent / KEY_NAME))}",
            ]
        lines += ["[file_shares]", *(f"{name} = {json.dumps(str(path))}" for name, path in self.shares.items())]
        if self.raster_stores:
            lines += [
                "[raster_stores]",
                *(f"{name} = {json.dumps(str(path))}" for name, path in self.raster_stores.items()),
            ]
        lines += ["[auth]", f"anonymous = {'false' if self.auth else 'true'}"]
        (self.root / "gpjobs.toml").write_text("\n".join(lines) + "\n")

    def _serving_url(self, offset: int) -> str | None:
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            for line in log.read().decode(errors="replace").splitlines():
                if "serving on " in line:
                    return line.split("serving on ", 1)[1].strip()
        return None


def _mint_token(db_path: Path) -> str:
    from gpjobs.store import Store

    async def mint() -> str:
        store = await Store.open(db_path)
        try:
            return await store.create_token(USERNAME, "user")
        finally:
            await store.close()

    return asyncio.run(mint())


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def processes_mentioning(text: str) -> list[int]:
    """Live pids whose command line contains `text` or whose working folder is named `text` (a job id: a cold
    child's spec path, and the work folder every child of the job runs in, warm ones included)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode("utf-8", "replace")
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if (text in cmdline or Path(cwd).name == text) and process_alive(int(entry.name)):
                pids.append(int(entry.name))
    return pids
