"""A local Ray head for the Ray pool tests and bench/scale.py: `python tests/harness/ray_head.py [CPUS]` starts one
on loopback (`ray.init`), prints its address, and shuts it down (every process it started) when stdin closes.

`local_ray_head()` runs that script and yields {"address", "env"}; the pytest fixture `ray_cluster`
(tests/conftest.py) holds one for the session. Token authentication is on, with a token made for the head and
handed to the server and the head through RAY_AUTH_TOKEN.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def local_ray_head(cpus: int = 2, start_timeout_s: float = 120) -> Iterator[dict[str, str]]:
    """A head on loopback with `cpus` CPUs: {"address": ..., "env": ...}, where env is what a server (and the
    head's workers) need: the head's auth token, and this tree on PYTHONPATH. Shut down on exit."""
    env = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    head = subprocess.Popen(
        [sys.executable, __file__, str(cpus)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **env},
        cwd=REPO_ROOT,
    )
    assert head.stdin is not None and head.stdout is not None
    try:
        deadline = time.monotonic() + start_timeout_s
        line = ""
        while not line.startswith("RAY_ADDRESS ") and time.monotonic() < deadline and head.poll() is None:
            line = head.stdout.readline()
        if not line.startswith("RAY_ADDRESS "):
            raise RuntimeError(f"the Ray head did not start (exit {head.poll()})")
        yield {"address": line.split()[1], "env": env}
    finally:
        head.stdin.close()  # the head shuts its cluster down
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()


if __name__ == "__main__":
    import ray

    ray.init(
        num_cpus=int(sys.argv[1]) if len(sys.argv) > 1 else 2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="warning",
        log_to_driver=False,
    )
    print(f"RAY_ADDRESS {ray.get_runtime_context().gcs_address}", flush=True)
    sys.stdin.read()  # until the caller closes our stdin
    ray.shutdown()
