"""Command-line flags made from a config dataclass, so a default is written once: in its field.

Field `batch_rows` becomes `--batch-rows`, its help `metadata["help"]` followed by the field's
own default; a nested dataclass is flattened (`fetch.timeout` -> `--timeout`). Metadata may
rename the flag (`flag`), list `choices`, keep a field off the command line (`cli: False`: the
graph sets it), or add a shortcut flag that sets the field to a value (`alias`: (flag, value,
help)). A bool field is a switch that flips its default (`respect_robots_txt=True` ->
`--ignore-robots-txt`). A field without a default is a required flag. Flags left out keep the
field's default, since each flag's own default is None.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Iterator
from typing import Any

from filters.options import coerce

_MISSING = dataclasses.MISSING


def option(default: Any, help: str = "", **meta: Any) -> Any:
    """A dataclass field with its flag's `help` and other metadata (`flag`, `choices`, ...)."""
    return dataclasses.field(default=default, metadata={"help": help, **meta})


def default_of(field: dataclasses.Field) -> Any:
    """The field's default, its factory's value included; `dataclasses.MISSING` when none."""
    if field.default is not _MISSING:
        return field.default
    if field.default_factory is not _MISSING:
        return field.default_factory()
    return _MISSING


def _leaves(config_class: type, path: tuple[str, ...] = ()) -> Iterator[tuple]:
    """(dest path, field, type) of each field a user sets, nested dataclasses flattened."""
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        if field.metadata.get("cli", True) is False:
            continue
        if dataclasses.is_dataclass(hints[field.name]):
            yield from _leaves(hints[field.name], (*path, field.name))
        else:
            yield (*path, field.name), field, hints[field.name]


def _dest(path: tuple[str, ...]) -> str:
    return "__".join(part for part in path if part)  # no prefix: the field's own name


def _shown(value: Any) -> str:
    if value is None or value in ((), ""):
        return "none"
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def add_config_flags(group, config_class: type, prefix: str) -> None:
    """One flag per field of `config_class` on `group`; values land in `prefix__field` dests
    (`field` alone when `prefix` is empty)."""
    for path, field, hint in _leaves(config_class):
        meta, default = field.metadata, default_of(field)
        dest = _dest((prefix, *path))
        flag = meta.get("flag", "--" + field.name.replace("_", "-"))
        text = meta.get("help", "")
        if hint is bool:
            group.add_argument(flag, dest=dest, action="store_const", const=not default, help=text)
        else:
            if default is not _MISSING:
                text = f"{text} (default: {_shown(default)})".strip()
            group.add_argument(flag, dest=dest, default=None, choices=meta.get("choices"),
                               metavar=meta.get("metavar", None if "choices" in meta
                                                else field.name.upper()),
                               required=default is _MISSING, help=text)  # fmt: skip
        if "alias" in meta:
            alias, value, alias_help = meta["alias"]
            group.add_argument(alias, dest=dest, action="store_const", const=value, help=alias_help)


def config_from_flags(args: argparse.Namespace, config_class: type, prefix: str) -> Any:
    """The `config_class` instance that the flags `add_config_flags` added describe."""
    return _build(vars(args), config_class, (prefix,))


def _build(values: dict, config_class: type, path: tuple[str, ...]) -> Any:
    hints = typing.get_type_hints(config_class)
    kwargs = {}
    for field in dataclasses.fields(config_class):
        if field.metadata.get("cli", True) is False:
            continue
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            kwargs[field.name] = _build(values, hint, (*path, field.name))
            continue
        value = values.get(_dest((*path, field.name)))
        if value is not None:
            kwargs[field.name] = coerce(value, hint)
    return config_class(**kwargs)


def settings(value: Any) -> Any:
    """`value` as JSON-able data for a fingerprint, fields marked `speed_only` left out: they
    change how fast the outputs are made, never what they hold."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: settings(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.metadata.get("speed_only")
        }
    if isinstance(value, dict):
        return {k: settings(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [settings(v) for v in value]
    return value
