"""docs/parameters.md, generated from the declarations (`python -m gpjobs.tasks.reference > docs/parameters.md`;
a test fails when the file is stale)."""

from __future__ import annotations

from gpjobs import catalog
from gpjobs.tasks.params import markdown_table
from gpjobs.tasks.train import PARAMETERS, TASK_NAME


def _argument_rows(info: catalog.ModelTypeInfo) -> list[str]:
    rows = ["| argument | type | default | accepts |", "|---|---|---|---|"]
    for name, spec in sorted(info.arguments.items()):
        accepts = spec.help
        if spec.minimum is not None or spec.maximum is not None:
            accepts += f"; {spec.minimum:g} … {spec.maximum:g}"
        if spec.choices:
            accepts += f"; one of {', '.join(spec.choices)}"
        if spec.no_effect:
            accepts += f" (no effect: {spec.no_effect})"
        default = "" if spec.default is None else f"`{spec.default}`"
        rows.append(f"| `{name}` | {spec.kind} | {default} | {accepts.replace('|', '/')} |")
    return rows


def parameters_markdown() -> str:
    lines = [
        f"# {TASK_NAME} parameters",
        "",
        "Generated from `gpjobs/tasks/train.py` and `gpjobs/catalog.py` by "
        "`python -m gpjobs.tasks.reference`; do not edit by hand.",
        "",
        "Every parameter is a form field of `submitJob` (any spelling: `overwriteModel`, `overwrite_model`), "
        "and a flag of `gpjobs train` (`--batch-size`). Text values are typed by the server: "
        '`"True"`, `"0.001"`, `"[1, 2]"` and `""` (unset) all work.',
        "",
        markdown_table(PARAMETERS),
        "",
        "## Model types and their arguments",
        "",
    ]
    for name in catalog.implemented_model_types():
        info = catalog.MODEL_TYPES[name]
        backbones = ", ".join(info.backbones) or "none (fixed networks)"
        lines += [
            f"### {name}",
            "",
            f"Data: {', '.join(sorted(info.formats))}. Backbones: {backbones}"
            + (f" (default {info.default_backbone})." if info.default_backbone else "."),
            "",
            *_argument_rows(info),
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(parameters_markdown())
