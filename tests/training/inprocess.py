"""`gpjobs predict` and the shipped inference script, driven from a test (for the new model types' checks)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any


def predict_lines(capsys: Any, package: str | Path, chips: list[str | Path], **options: Any) -> list[dict]:
    """`gpjobs predict PACKAGE CHIP... --json` run in this process (the command's own code); one dict per chip."""
    from gpjobs.training.predict import run_predict

    args = argparse.Namespace(package=str(package), chips=[str(c) for c in chips], json=True, masks_dir=None,
                              out_dir=None, batch_size=8, box=None, object=None)
    for key, value in options.items():
        setattr(args, key, value)
    capsys.readouterr()
    code = run_predict(args)
    out = capsys.readouterr()
    assert code == 0, out.err
    return [json.loads(line) for line in out.out.splitlines() if line.startswith("{")]


def inference_script(package: str | Path, folder: Path, *args: str) -> list[dict]:
    """The package's GpjobsInference.py in a fresh interpreter that cannot import gpjobs (-I)."""
    with zipfile.ZipFile(package) as zf:
        zf.extractall(folder)
    done = subprocess.run([sys.executable, "-I", "GpjobsInference.py", "model.emd", *args], cwd=folder,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
