"""Our side: `gpjobs train` with the task's defaults, in its own process, timed from after the imports
(the training code and the model type's family, as the peer imports torchvision's models before its clock).

    python bench/qualitylib/ours.py -- <gpjobs train flags...>

Prints one JSON line {"code", "wall"} on stdout (the command's own --json result goes there too);
the command's messages (LR finder, epochs) go to stderr, which the bench keeps as the run's log.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import gpjobs.cli
import gpjobs.training.models
import gpjobs.training.run_job  # torch and the training code: imports are not the job (the peer's neither)


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    if "--model-type" in argv:  # its family's modules (torchvision's detection models, ...): imports too
        gpjobs.training.models.family_for(argv[argv.index("--model-type") + 1])
    started = time.perf_counter()
    code = gpjobs.cli.main(["train", *argv])
    print(json.dumps({"code": code, "wall": time.perf_counter() - started}), flush=True)


if __name__ == "__main__":
    main()
