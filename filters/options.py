"""Filter selection and options: `--filters`, one flag per config field, a YAML file, plugins.

Flags come from the config dataclasses themselves (field `min_words` -> `--min-words`, help
from the field's metadata), so a filter needs no CLI code of its own. Filters registered by a
plugin module (`--filter-plugins my.module`) take options from `--filter-option NAME.FIELD=VALUE`
or the YAML file. Precedence: a config field's default < the YAML file < a flag given on the
command line. A YAML file looks like

    plugins: [my_company.filters]
    filters:
      - lang: {lang: [en, de], lang_min_prob: 0.9}
      - caption: {min_words: 2}
      - image
      - score: {checkpoint: runs/first/checkpoint.pt, keep_top_fraction: 0.3}
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import types
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from filters.base import FilterStep, get, registered, step

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FiltersConfig:
    """The configured filters in `--filters` order; each stage takes the ones of its kind."""

    steps: tuple[FilterStep, ...] = dataclasses.field(default=(), metadata={"cli": False})

    @property
    def text(self) -> tuple[FilterStep, ...]:
        return tuple(s for s in self.steps if s.kind == "text")

    @property
    def image(self) -> tuple[FilterStep, ...]:
        return tuple(s for s in self.steps if s.kind == "image")

    @property
    def batch(self) -> tuple[FilterStep, ...]:
        return tuple(s for s in self.steps if s.kind == "batch")


def _dest(name: str, field_name: str) -> str:
    return f"filter__{name}__{field_name}"


def _flag(field: dataclasses.Field) -> str:
    return "--" + field.name.replace("_", "-")


def _configurable() -> dict[str, type]:
    return {n: d.config_class for n, d in registered().items()}


def add_arguments(group) -> None:
    """Add to `group` the filters' flags: selection, YAML, plugins, and every filter's fields."""
    names = ", ".join(sorted(_configurable()))
    group.add_argument(
        "--filters", help=f"comma-separated filters, in order, from: {names} (default: none)"
    )
    group.add_argument("--filter-config", help="YAML file selecting and configuring filters")
    group.add_argument("--filter-plugins", help="comma-separated modules that register filters")
    group.add_argument(
        "--filter-option",
        action="append",
        default=[],
        metavar="NAME.FIELD=VALUE",
        help="an option of any filter, plugins' included (repeatable)",
    )
    for name, config_class in sorted(_configurable().items()):
        for field in dataclasses.fields(config_class):
            try:
                group.add_argument(
                    _flag(field),
                    dest=_dest(name, field.name),
                    default=None,
                    help=f"[{name}] {field.metadata.get('help', '')}",
                )
            except argparse.ArgumentError:  # two plugins share a field name: first one wins
                log.debug(
                    "--%s is taken; set %s.%s with --filter-option", field.name, name, field.name
                )


def coerce(value: Any, hint: Any) -> Any:
    """`value` (a CLI string or a YAML value) as type `hint` (int, float, bool, str, tuples)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
            return None
        return coerce(value, options[0])
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str) and value.strip().lower() in ("", "none"):
            return ()
        items = value.split(",") if isinstance(value, str) else list(value)
        item_type = typing.get_args(hint)[0]
        return tuple(
            coerce(item.strip() if isinstance(item, str) else item, item_type) for item in items
        )
    if hint is bool and isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"not a boolean: {value!r}")
        return value.lower() in ("true", "1", "yes")
    return hint(value)


def build_config(config_class: type, values: dict[str, Any]) -> Any:
    """An instance of `config_class` from raw values; unknown fields are an error, not ignored."""
    hints = typing.get_type_hints(config_class)
    unknown = set(values) - set(hints)
    if unknown:
        raise ValueError(f"{config_class.__name__} has no option {', '.join(sorted(unknown))}")
    return config_class(**{k: coerce(v, hints[k]) for k, v in values.items()})


def _read_yaml(path: str) -> tuple[list[str], dict[str, dict], list[str]]:
    """(filter names in order, options per filter, plugin modules) of a YAML filter file."""
    with open(path, encoding="utf-8") as f:
        document = yaml.safe_load(f) or {}
    names, options = [], {}
    for item in document.get("filters") or []:
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise ValueError(f"{path}: each filter is a name or {{name: {{options}}}}: {item!r}")
        ((name, values),) = item.items()
        names.append(name)
        options[name] = dict(values or {})
    return names, options, list(document.get("plugins") or [])


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def config_from_args(args: argparse.Namespace) -> FiltersConfig | None:
    """The filters `args` select, configured; None when no filter is selected."""
    names, options, plugins = _read_yaml(args.filter_config) if args.filter_config else ([], {}, [])
    for module in plugins + _split(args.filter_plugins):
        importlib.import_module(module)
    names = _split(args.filters) or names
    if not names:
        return None
    for option in args.filter_option:
        target, sep, value = option.partition("=")
        name, dot, field_name = target.partition(".")
        if not (sep and dot):
            raise ValueError(f"--filter-option wants NAME.FIELD=VALUE, not {option!r}")
        options.setdefault(name, {})[field_name] = value
    for dest, value in vars(args).items():
        if dest.startswith("filter__") and value is not None:
            _, name, field_name = dest.split("__", 2)
            options.setdefault(name, {})[field_name] = value
    if len(set(names)) != len(names):
        raise ValueError(f"a filter is selected twice: {names}")
    for name in sorted(set(options) - set(names)):
        log.warning("options of filter %r are ignored: it is not in --filters", name)
    steps = [step(n, build_config(get(n).config_class, options.get(n, {}))) for n in names]
    return FiltersConfig(tuple(steps))
