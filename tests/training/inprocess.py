"""`gpjobs predict`, driven from a test (for the new model types' checks)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def predict_lines(capsys: Any, package: str | Path, chips: list[str | Path], **options: Any) -> list[dict]:
    """`gpjobs predict PACKAGE CHIP... --json` run in this process (the command's own code); one dict per chip."""
    from gpjobs.training.predict import run_predict

    args = argparse.Namespace(
        package=str(package),
        chips=[str(c) for c in chips],
        json=True,
        masks_dir=None,
        out_dir=None,
        batch_size=8,
        box=None,
        object=None,
    )
    for key, value in options.items():
        setattr(args, key, value)
    capsys.readouterr()
    code = run_predict(args)
    out = capsys.readouterr()
    assert code == 0, out.err
    return [json.loads(line) for line in out.out.splitlines() if line.startswith("{")]
