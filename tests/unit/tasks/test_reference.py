"""docs/parameters.md is what the declarations say (regenerate it with `make docs`)."""

from __future__ import annotations

from pathlib import Path

from gpjobs.tasks.reference import parameters_markdown

DOC = Path(__file__).resolve().parents[3] / "docs" / "parameters.md"


def test_parameter_reference_is_current() -> None:
    assert DOC.read_text(encoding="utf-8").rstrip("\n") == parameters_markdown().rstrip("\n"), (
        "docs/parameters.md is stale: run `make docs`"
    )
    assert "| `batch_size` | GPLong | no | `2` |" in DOC.read_text(encoding="utf-8")
