"""A GP task parameter, declared once: it drives the task JSON, the html form, the submit parser,
the `gpjobs` command-line flags and the parameter docs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gpjobs.parsing import is_unset, parse_bool, parse_float, parse_int, parse_str

INPUT = "esriGPParameterDirectionInput"
OUTPUT = "esriGPParameterDirectionOutput"


class ParameterError(Exception):
    """Invalid or missing input parameters; `details` has one line per problem, each naming its parameter."""

    def __init__(self, details: list[str]) -> None:
        super().__init__("; ".join(details))
        self.details = details


@dataclass(frozen=True)
class GPParameter:
    """One task parameter as the task JSON declares it, with the rules its value must follow.

    `default` is the typed value an unset parameter takes (and the task JSON's `defaultValue`).
    Numbers must lie in [minimum, maximum] (`maximum_exclusive`: strictly below maximum).
    """

    name: str
    data_type: str  # GPString | GPLong | GPDouble | GPBoolean
    display_name: str
    description: str
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    direction: str = INPUT
    minimum: float | None = None
    maximum: float | None = None
    maximum_exclusive: bool = False

    @property
    def flag(self) -> str:
        """The command-line flag: --batch-size for batch_size."""
        return "--" + self.name.replace("_", "-").lower()

    def parse(self, raw: Any) -> Any:
        """The typed value of a submitted value (`default` when unset); ValueError names the parameter."""
        if is_unset(raw):
            return self.default
        try:
            if self.data_type == "GPBoolean":
                return parse_bool(raw)
            if self.data_type == "GPLong":
                return parse_int(raw, _whole(self.minimum), _whole(self.maximum))
            if self.data_type == "GPDouble":
                return parse_float(raw, self.minimum, self.maximum, self.maximum_exclusive)
            return parse_str(raw)
        except ValueError as exc:
            raise ValueError(f"{self.name}: {exc}") from None

    def json(self) -> dict[str, Any]:
        """The parameter as the task resource lists it (every key the clients index)."""
        return {
            "name": self.name,
            "dataType": self.data_type,
            "displayName": self.display_name,
            "description": self.description,
            "direction": self.direction,
            # The arcgis client writes non-string defaults into generated Python source: they must be literals.
            "defaultValue": self.default,
            "parameterType": "esriGPParameterTypeRequired" if self.required else "esriGPParameterTypeOptional",
            "category": "",
            "choiceList": list(self.choices),
        }


def _whole(value: float | None) -> int | None:
    return None if value is None else int(value)


def canonical_names(parameters: tuple[GPParameter, ...]) -> Callable[[str], str | None]:
    """A lookup from any client spelling (overwriteModel, freeze_Model, INFOLDER) to the declared name."""
    table = {p.name.replace("_", "").lower(): p.name for p in parameters if p.direction == INPUT}
    return lambda key: table.get(str(key).replace("_", "").lower())


def collect_inputs(params: Mapping[str, Any], parameters: tuple[GPParameter, ...]) -> dict[str, Any]:
    """Submitted values of declared inputs by declared name; other keys (f, token, env:*) are ignored."""
    canonical = canonical_names(parameters)
    inputs: dict[str, Any] = {}
    for key, value in params.items():
        name = canonical(key)
        # Both spellings may arrive (an empty overwrite_model next to overwriteModel=true): set wins.
        if name is not None and (name not in inputs or is_unset(inputs[name])):
            inputs[name] = value
    return inputs


def add_flags(
    parser: argparse.ArgumentParser,
    parameters: tuple[GPParameter, ...],
    *,
    skip: tuple[str, ...] = (),
    repeat: tuple[str, ...] = (),
) -> None:
    """One flag per input parameter, named after it, with its description; values stay text (or bool)
    so that the task's own parser types and checks them, exactly as for a submitted job."""
    for p in parameters:
        if p.direction != INPUT or p.name in skip:
            continue
        default = "" if p.default is None else p.default
        help_text = f"{p.description} (default: {default})" if not p.required else f"{p.description} (required)"
        if p.choices:
            help_text += f"; one of {', '.join(p.choices)}"
        if p.data_type == "GPBoolean":
            parser.add_argument(
                p.flag, dest=p.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif p.name in repeat:
            parser.add_argument(
                p.flag,
                dest=p.name,
                action="append",
                required=p.required,
                metavar="VALUE",
                help=help_text + "; repeat for several",
            )
        else:
            # Choices are checked (with "did you mean") by the task's parser, not by argparse.
            parser.add_argument(p.flag, dest=p.name, default=None, required=p.required, metavar="VALUE", help=help_text)


def values_from_flags(args: argparse.Namespace, parameters: tuple[GPParameter, ...]) -> dict[str, Any]:
    """The parameter values given on the command line (unset flags left out)."""
    return {
        p.name: getattr(args, p.name)
        for p in parameters
        if p.direction == INPUT and getattr(args, p.name, None) is not None
    }


def markdown_table(parameters: tuple[GPParameter, ...]) -> str:
    """The parameters as a Markdown table (docs/parameters.md is generated from it)."""
    rows = ["| name | type | required | default | accepts |", "|---|---|---|---|---|"]
    for p in parameters:
        accepts = p.description
        if p.minimum is not None or p.maximum is not None:
            upper = f"< {p.maximum:g}" if p.maximum_exclusive else f"{p.maximum:g}"
            accepts += f" Range: {p.minimum:g} … {upper}."
        if p.choices:
            accepts += f" One of: {', '.join(p.choices)}."
        default = "" if p.default is None else f"`{p.default}`"
        rows.append(
            f"| `{p.name}` | {p.data_type} | {'yes' if p.required else 'no'} | {default} | "
            f"{accepts.replace('|', '/')} |"
        )
    return "\n".join(rows)
