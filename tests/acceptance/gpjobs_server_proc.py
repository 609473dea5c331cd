"""Run the real `gpjobs serve` as a subprocess (with the fake training child) for acceptance tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

FAKE_TRAINER = Path(__file__).resolve().parents[1] / "fakes" / "fake_trainer.py"
TASK_PATH = "/arcgis/rest/services/System/RasterAnalysisTools/GPServer/TrainDeepLearningModel"
TERMINAL = {"esriJobSucceeded", "esriJobFailed", "esriJobTimedOut", "esriJobCancelled"}


class ServerProcess:
    """`python -m gpjobs.cli serve` on a free port over `data_dir`, the fake trainer as its child."""

    def __init__(self, data_dir: Path, share: Path, **env: str) -> None:
        self.data_dir, self.share = data_dir, share
        self.env = {**os.environ, "GPJOBS_TRAINER_COMMAND": f"{sys.executable} {FAKE_TRAINER}",
                    "GPJOBS_RETRY_BACKOFF_S": "0", "GPJOBS_PROGRESS_FLUSH_S": "0.2", "GPJOBS_DEVICES": "cpu", **env}
        self.proc: subprocess.Popen | None = None
        self.base = ""
        self.log_path = data_dir / "server.log"

    def start(self, timeout: float = 60.0) -> "ServerProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpjobs.cli", "serve", "--data-dir", str(self.data_dir), "--port", "0",
             "--file-share", f"default={self.share}"],
            stdout=subprocess.PIPE, stderr=log, env=self.env, start_new_session=True)
        log.close()
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or b"serving on" not in line[0]:
            self.kill()
            raise RuntimeError(f"server did not start: {line!r}\n{self.log_path.read_text()[-3000:]}")
        url = line[0].decode().split("serving on ", 1)[1].strip()
        self.base = url.split("/arcgis/", 1)[0]
        return self

    def kill(self) -> None:
        """kill -9: no cleanup of any kind."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def request(self, path: str, data: dict[str, str] | None = None, timeout: float = 30.0) -> Any:
        body = urllib.parse.urlencode({"f": "json", **(data or {})}).encode()
        with urllib.request.urlopen(self.base + path, data=body, timeout=timeout) as resp:
            return json.loads(resp.read())

    def submit(self, **fields: str) -> dict[str, Any]:
        return self.request(f"{TASK_PATH}/submitJob", fields)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.request(f"{TASK_PATH}/jobs/{job_id}")

    def wait(self, job_id: str, statuses=TERMINAL, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("jobStatus") in statuses:
                return info
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {info}")
            time.sleep(0.1)


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def processes_mentioning(text: str) -> list[int]:
    """Live pids whose command line contains `text` (a job id: its children's spec path)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode("utf-8", "replace") and process_alive(int(entry.name)):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids
