"""Typed constructor arguments: what an argument accepts is written once, in its annotation.

``Annotated[int, Range(ge=1)]``, ``Literal["tanh", "relu"]``, ``float | None``, ``list[int]``: the
annotations of a constructor are its schema. ``problems(fn, values)`` checks values against them
(every problem at once, each with the accepted values, for the config check that runs before
anything is built); ``@checked`` makes a constructor check its own arguments the same way when
Python code calls it. Annotations this module does not know (modules, callables) are not checked.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import math
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union


class ArgumentError(ValueError):
    """Arguments outside what their annotations accept; ``problems`` holds
    ``(name, value, accepted)`` for each."""

    def __init__(self, owner: str, problems: list[tuple[str, Any, str]]) -> None:
        self.owner, self.problems = owner, problems
        super().__init__("; ".join(f"{name}={value!r} is not allowed: {accepted}"
                                   for name, value, accepted in problems) + f" ({owner}).")


@dataclass(frozen=True)
class Range:
    """A closed or open interval for a number: ``Range(ge=1)``, ``Range(gt=0, lt=1)``."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __call__(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        parts = [f"{op} {_number(bound)}" for op, bound in
                 ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if bound is not None]
        return " and ".join(parts)


PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else repr(float(x))


def _describe(hint: Any) -> str:
    """The values ``hint`` accepts, in words."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        base, *meta = args
        ranges = [str(m) for m in meta if isinstance(m, Range)]
        return f"{_describe(base)} {' and '.join(ranges)}".strip()
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in args)
    if origin in (list, tuple, Sequence, typing.Sequence):
        item = args[0] if args else Any
        return f"a list of {_plural(_describe(item))}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            type(None): "null", os.PathLike: "a path"}.get(hint, getattr(hint, "__name__",
                                                                       str(hint)))


def _plural(words: str) -> str:
    for one, many in (("an integer", "integers"), ("a number", "numbers"), ("a string", "strings")):
        if words.startswith(one):
            return many + words[len(one):]
    return words


def _known(hint: Any) -> bool:
    """Whether ``accepts`` can judge values of ``hint`` (else the argument is not checked)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return _known(args[0])
    if origin is Literal:
        return True
    if origin in (Union, types.UnionType):
        return all(map(_known, args))
    if origin in (list, tuple, Sequence, typing.Sequence):
        return all(map(_known, (a for a in args if a is not Ellipsis)))
    return hint in (int, float, bool, str, type(None), os.PathLike, Any)


def accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` is one of the values ``hint`` describes (ints pass for floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        base, *meta = args
        return accepts(base, value) and all(
            m(value) for m in meta if isinstance(m, Range))
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (Union, types.UnionType):
        return any(accepts(arm, value) for arm in args)
    if origin in (list, tuple, Sequence, typing.Sequence):
        items = [a for a in args if a is not Ellipsis] or [Any]
        return (isinstance(value, Sequence) and not isinstance(value, str)
                and all(accepts(items[0], v) for v in value))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # a finite number: inf passed "> 0" and ran until the loss was inf
        return (isinstance(value, int | float) and not isinstance(value, bool)
                and math.isfinite(value))
    if hint is str:
        return isinstance(value, str)
    if hint is type(None):
        return value is None
    if hint is os.PathLike:
        return isinstance(value, os.PathLike)
    return True


@functools.cache
def _signature(fn: Callable) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """The named parameters of ``fn`` (for a class: its ``__init__``, following ``**kwargs`` up
    the bases), their type hints, and whether it also takes arbitrary keywords."""
    functions = ([c.__init__ for c in fn.__mro__ if "__init__" in vars(c)]
                 if isinstance(fn, type) else [fn])
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    for function in functions:
        function = inspect.unwrap(function)
        signature = inspect.signature(function)
        try:
            own_hints = typing.get_type_hints(function, include_extras=True)
        except Exception:  # unresolvable annotations: check names only
            own_hints = {}
        for name, param in signature.parameters.items():
            if name != "self" and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                params.setdefault(name, param)
                if name in own_hints:
                    hints.setdefault(name, own_hints[name])
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            return params, hints, False
    return params, hints, True


def problems(fn: Callable, values: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    """``(name, value, accepted)`` for each of ``values`` that ``fn``'s annotations refuse, and
    for each name ``fn`` does not take."""
    params, hints, open_ended = _signature(fn)
    found = []
    for name, value in values.items():
        if name not in params:
            if not open_ended:
                found.append((name, value, "not an argument; accepted: " + ", ".join(params)
                              if params else "not an argument: it takes none"))
            continue
        hint = hints.get(name)
        if hint is not None and _known(hint) and not accepts(hint, value):
            found.append((name, value, f"expected {_describe(hint)}"))
    return found


_PRECHECKED = contextvars.ContextVar("prechecked", default=False)


@contextlib.contextmanager
def prechecked():
    """Within this block constructors skip their own annotation check (``checked``): the config
    being built was checked against the same annotations, all at once (``config_checks.check``),
    so each argument is validated once. Checks that annotations cannot express (``fail``) run."""
    token = _PRECHECKED.set(True)
    try:
        yield
    finally:
        _PRECHECKED.reset(token)


def checked(init: Callable) -> Callable:
    """Make a constructor check its arguments against its annotations (``ArgumentError``), unless
    it is built from a config already checked (``prechecked``)."""

    signature = inspect.signature(init)
    named = {name for name, p in signature.parameters.items()
             if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        if not _PRECHECKED.get():
            bound = signature.bind(self, *args, **kwargs).arguments
            found = problems(init, {name: bound[name] for name in named if name in bound})
            if found:
                raise ArgumentError(type(self).__qualname__, found)
        init(self, *args, **kwargs)

    return wrapper


def fail(owner: object, name: str, value: Any, accepted: str) -> None:
    """Raise the ``ArgumentError`` of one argument that its type cannot express (e.g. a bound
    that depends on another argument)."""
    raise ArgumentError(type(owner).__qualname__ if not isinstance(owner, str) else owner,
                        [(name, value, accepted)])


def choices(fn: Callable, name: str) -> tuple[Any, ...] | None:
    """The values a ``Literal`` annotation of argument ``name`` of ``fn`` allows, if it has one."""
    hint = _signature(fn)[1].get(name)
    while typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def locations(fn: Callable) -> list[str]:
    """The arguments of ``fn`` that name places on disk (annotated with ``os.PathLike``): what a
    checkpoint's config may not choose when the model is evaluated (``evaluate``)."""
    def mentions(hint: Any) -> bool:
        return hint is os.PathLike or any(map(mentions, typing.get_args(hint)))

    return [name for name, hint in _signature(fn)[1].items() if mentions(hint)]


def within(prefix: str, build: Callable[[], Any]) -> Any:
    """``build()``, its ``ArgumentError`` naming the arguments under ``prefix`` (a part built
    inside another, e.g. an encoder's ``net``)."""
    try:
        return build()
    except ArgumentError as err:
        raise ArgumentError(err.owner, [(f"{prefix}.{name}", value, accepted)
                                        for name, value, accepted in err.problems]) from None
