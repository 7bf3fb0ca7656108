"""The JSON files the report tools read (a row's record, a stretch's points, a job's
results.json), checked before anything is written: one error naming the file, the key, its
value and what is accepted, never a traceback halfway through a page. Each tool gives a schema,
``{key: (test, accepted in words)}`` (a dotted key is a key of a mapping the file holds), and
its own error class (its exit code)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from vae_lightning.files import open_regular

Schema = Mapping[str, tuple[Callable[[Any], bool], str]]


def finite(value: Any) -> bool:
    """A finite number (Python's json reads NaN and Infinity too; a bool is no number)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# Nats per point beyond this are no model's (an overflow written as a number): 1e308 overflowed
# the paired differences of vae-compare and matplotlib's axis, and printed as 309 digits.
MAX_NATS = 1e12


def nats(value: Any) -> bool:
    """A number of nats (a bound, an estimate or its standard error): finite and under
    ``MAX_NATS`` in size."""
    return finite(value) and abs(value) < MAX_NATS


NATS = f"a finite number of nats under {MAX_NATS:g} in size"


def whole(value: Any, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def fraction(value: Any) -> bool:
    """A proportion (an error rate): a finite number in [0, 1]."""
    return finite(value) and 0 <= value <= 1


def text(value: Any) -> bool:
    return isinstance(value, str)


def strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def optional(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """``test``, or null."""
    return lambda value: value is None or test(value)


def mapping(value: Any) -> bool:
    """A JSON object."""
    return isinstance(value, dict)


def estimate(name: str, what: str = "the estimate (nats, nats_se)", nullable: bool = False,
             keys: Collection[str] = ("nats", "nats_se")) -> dict[str, tuple[Callable, str]]:
    """The schema of an estimate at ``name`` (vae-eval's ``{"nats": ..., "nats_se": ...}``):
    an object (or null where ``nullable``), each of ``keys`` a finite number or null."""
    node = (optional(mapping), f"an object with {what}, or null") if nullable else \
        (mapping, f"an object with {what}")
    return {name: node, **{f"{name}.{key}": (optional(nats), f"{NATS}, or null")
                           for key in keys}}


def dotted(found: dict[str, Any], key: str) -> Any:
    """The value at a dotted key of a JSON object, None where it has none."""
    node: Any = found
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def read(path: Path, what: str, fix: str, error: type[Exception]) -> Any:
    """The JSON value of ``path``; ``error`` where it cannot be read or is not JSON. Only a
    regular file is opened (``files.open_regular``): a FIFO named results.json blocked
    vae-summarize forever."""
    try:
        file = open_regular(path, error, what)
    except error as err:  # a folder, a FIFO, a device, a dangling link: never opened
        raise error(f"{str(err).rstrip('.')}; {fix}.") from None
    except OSError as err:
        raise error(f"{path}: {what} cannot be read ({err.strerror}); {fix}.") from None
    try:
        with file:
            return json.loads(file.read())
    except OSError as err:
        raise error(f"{path}: {what} cannot be read ({err.strerror}); {fix}.") from None
    except ValueError as err:  # not JSON, not UTF-8
        raise error(f"{path}: {what} is not JSON ({err}); {fix}.") from None
    except RecursionError:  # json's decoder recurses once per level: [[[...]]] 10^5 deep
        raise error(f"{path}: {what} is not JSON this tool reads (arrays or objects nested "
                    f"deeper than Python's recursion limit, {sys.getrecursionlimit()}); "
                    f"{fix}.") from None


def checked(path: Path, value: dict[str, Any], schema: Schema, what: str, fix: str,
            error: type[Exception], required: Collection[str] = ()) -> dict[str, Any]:
    """``value`` (parsed from ``path``) if each key of ``schema`` it holds passes its test, and
    it holds the ``required`` ones; else ``error`` naming the file, the key, its value and what
    is accepted."""
    for key, (test, accepted) in schema.items():
        *parents, last = key.split(".")
        node: Any = value
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue  # its parent is absent or null, and was checked itself
        if last not in node:
            if key in required:
                raise error(f"{path}: {what} has no {key} (expected {accepted}); {fix}.")
            continue
        if not test(node[last]):
            raise error(f"{path}: {what}'s {key}={node[last]!r} is not allowed: expected "
                        f"{accepted}; {fix}.")
    return value


def read_object(path: Path, what: str, fix: str, error: type[Exception], schema: Schema,
                required: Collection[str] = ()) -> dict[str, Any]:
    """``read`` a JSON object and check it (``checked``)."""
    value = read(path, what, fix, error)
    if not isinstance(value, dict):
        raise error(f"{path}: {what} holds a JSON {type(value).__name__}, not an object; {fix}.")
    return checked(path, value, schema, what, fix, error, required)
