"""Command-line flags generated from dataclasses of defaults, so a default and its help are declared once.

Every entry point's configuration (engines, sampling, the A2R run, the RL recipe, curation's keep rule) is a
dataclass whose fields carry a one-line help; `add_dataclass_args` turns it into flags and
`dataclass_from_args` back into the dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def option(
    default: Any, help: str, *, flag: str | None = None, metavar: Any = None, choices: Any = None
) -> Any:
    """A dataclass field with its one-line help; `flag` names the flag when the field's name would not
    (a bool field `synthesize` read as `--synthesis/--no-synthesis`), `metavar` its values in `--help`,
    `choices` the only values it takes."""
    metadata = {"help": help, "flag": flag, "metavar": metavar, "choices": choices}
    if isinstance(default, (list, dict, set)):
        raise TypeError("give a mutable default through dataclasses.field(default_factory=...)")
    return dataclasses.field(default=default, metadata=metadata)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_args(
    group: argparse._ArgumentGroup | argparse.ArgumentParser,
    cls: type,
    skip: tuple[str, ...] = (),
    suppress_defaults: bool = False,
) -> None:
    """One flag per field of `cls`, typed from its annotation and helped by its `metadata["help"]`.

    Bools get both forms (`--x/--no-x`); a tuple annotation takes that many values. With `suppress_defaults`
    a flag that is not given leaves no attribute at all, so only what the user typed overrides a default;
    its help then names the dataclass default itself.
    """
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        kind = hints[field.name]
        default = field.default if field.default is not dataclasses.MISSING else None
        help = field.metadata.get("help")
        if suppress_defaults and help is not None:
            help = f"{help} (default: {default})".replace("%", "%%")
        options: dict[str, Any] = {
            "help": help,
            "default": argparse.SUPPRESS if suppress_defaults else default,
            "dest": field.name,
        }
        args = typing.get_args(kind)
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(a for a in args if a is not type(None))
            args = typing.get_args(kind)
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            options.update(
                type=args[0], nargs=len(args), metavar=field.metadata.get("metavar") or field.name.upper()
            )
        else:
            options["type"] = kind
        if field.metadata.get("choices") is not None:
            options["choices"] = field.metadata["choices"]
        group.add_argument(flag(field.metadata.get("flag") or field.name), **options)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """`cls` from the flags `add_dataclass_args` made (those present in `args`), with `overrides` on top."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**{**values, **overrides})
