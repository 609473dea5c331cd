"""A local Ray head for the Ray pool tests: `python tests/harness/ray_head.py` starts one on loopback with two
CPUs (`ray.init`), prints its address, and shuts it down (every process it started) when stdin closes.

The pytest fixture `ray_cluster` (tests/conftest.py) runs it once per session. Token authentication is on,
with a token made for the session and handed to the server and the head through RAY_AUTH_TOKEN.
"""

from __future__ import annotations

import sys

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
    sys.stdin.read()  # until the test session closes our stdin
    ray.shutdown()
