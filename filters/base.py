"""The filter interface and registry: one plain function and one config dataclass per filter.

A text filter is `check(pair, config)`; an image filter is `check(pair, image, config)`, where
`image` is the decoded RGB `PIL.Image` of `pair.image` and the sizes are in `pair`. Either one
returns None to keep the pair, a short snake_case reason to drop it, or a `Verdict` when it also
records what it learned (the lang filter records the language). `register` makes the filter
selectable by name; nothing else is needed, which is how users add their own, from any module
(datatrove's filter interface, without the base class).

A filter that judges pairs in batches (a model) or on the whole run (a top fraction) registers
its batched method instead, as datatrove's `filter_batch`: `register_batched` on
`make(config) -> PTransform`, pairs in, {"pairs", "stats"} out, every pair out once. Batched
filters run after the image dedup, so a model sees each picture once.

Configured filters travel through the pipeline as `FilterStep`s that name their module, not the
function object: the step pickles to any runner and hashes to the same run fingerprint, and a
worker imports the module, which registers the filter there too.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["text", "image", "batch"]
KINDS: tuple[str, ...] = ("text", "image", "batch")
_REASON = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)*$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Verdict:
    """A filter's answer when it has more to say than keep/drop: fields to set on the pair."""

    reason: str | None = None  # None keeps the pair
    updates: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FilterDef:
    """A registered filter: what `--filters NAME` selects."""

    name: str
    kind: Kind
    check: Callable[..., str | Verdict | None]
    config_class: type
    setup: Callable[[Any], None] | None = None  # warms heavy state once per worker
    doc: str = ""


@dataclass(frozen=True)
class FilterStep:
    """One configured filter in a chain: picklable, JSON-able, resolved on the worker."""

    name: str
    kind: Kind
    module: str
    config: Any

    def resolve(self) -> FilterDef:
        importlib.import_module(self.module)
        return get(self.name)


_REGISTRY: dict[str, FilterDef] = {}


def register(
    name: str,
    kind: Kind,
    config_class: type,
    setup: Callable[[Any], None] | None = None,
) -> Callable[[Callable], Callable]:
    """Decorator: register `check` as filter `name` of `kind`, configured by `config_class`.

    Re-registering the same function (a module imported twice) is harmless; another function
    under a taken name is an error, so two plugins cannot silently shadow each other.
    """
    if not _NAME.match(name):
        raise ValueError(f"filter name {name!r} must be snake_case")
    if kind not in KINDS:
        raise ValueError(f"filter kind {kind!r} must be one of {KINDS}")
    if not dataclasses.is_dataclass(config_class):
        raise TypeError(f"config of filter {name!r} must be a dataclass")

    def decorate(check: Callable) -> Callable:
        old = _REGISTRY.get(name)
        if old and (old.check.__module__, old.check.__qualname__) != (
            check.__module__,
            check.__qualname__,
        ):
            raise ValueError(f"filter {name!r} is already registered by {old.check.__module__}")
        doc = (check.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = FilterDef(name, kind, check, config_class, setup, doc[0] if doc else "")
        return check

    return decorate


def register_batched(name: str, config_class: type) -> Callable[[Callable], Callable]:
    """Decorator: register `make(config) -> PTransform` as the batched filter `name`."""
    return register(name, "batch", config_class)


def get(name: str) -> FilterDef:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown filter {name!r}; registered: {known}") from None


def registered() -> dict[str, FilterDef]:
    """All registered filters by name, the built-in ones included."""
    _load_builtins()
    return dict(_REGISTRY)


def step(name: str, config: Any = None) -> FilterStep:
    """A chain step for filter `name`, with its default config unless one is given."""
    definition = get(name)
    if config is None:
        config = definition.config_class()
    elif not isinstance(config, definition.config_class):
        raise TypeError(f"filter {name!r} takes a {definition.config_class.__name__}")
    return FilterStep(name, definition.kind, definition.check.__module__, config)


def is_reason(text: object) -> bool:
    return isinstance(text, str) and bool(_REASON.match(text))


def _load_builtins() -> None:
    for module in ("filters.lang", "filters.caption", "filters.image", "filters.score"):
        importlib.import_module(module)
