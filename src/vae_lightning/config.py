"""The configuration: checked against the constructors it names, and built by Hydra.

Every config node with a ``_target_`` is checked before anything is built, against the target's
own signature (``vae_lightning.args``: names, types, ``Literal`` choices and ranges written in the
annotations), so a run with bad input stops before training with one message listing every
problem by its config key. Errors raised while building (a constructor's own checks across
arguments) are reported the same way, with the key of the node that raised them.

Importing this module imports no torch (``--help`` and ``--cfg job`` stay fast).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    InterpolationToMissingValueError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

import vae_lightning.resolvers  # noqa: F401  (registers the resolvers the configs use)
from vae_lightning.errors import ConfigError, UserError

log = logging.getLogger(__name__)

HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}

# Optional integrations: a target that needs a package outside the default install, the modules
# that provide it (any one will do) and the extra that installs them.
EXTRAS = {
    "lightning.pytorch.loggers.TensorBoardLogger": (("tensorboard", "tensorboardX"), "tensorboard"),
    "lightning.pytorch.callbacks.RichProgressBar": (("rich",), "rich"),
    "lightning.pytorch.callbacks.RichModelSummary": (("rich",), "rich"),
    "vae_lightning.callbacks.ConfigTree": (("rich",), "rich"),
}


def target_nodes(node: Any, path: str = "") -> list[tuple[str, DictConfig]]:
    """Every config node with a ``_target_``, with its dotted key (the hydra node excluded)."""
    if not isinstance(node, DictConfig):
        return []
    found = [(path, node)] if "_target_" in node else []
    for key in node:
        if path == "" and key == "hydra":
            continue
        found += target_nodes(node._get_node(key), f"{path}.{key}" if path else str(key))
    return found


# Values the configs leave missing (???) because the run fills them in.
FILLED_IN = {"model.data_shape"}


def _missing(cfg: DictConfig) -> list[str]:
    """The keys whose value is required (``???``) and was not given."""
    found = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, DictConfig):
            for key in node:
                if path == "" and key == "hydra":
                    continue
                child = f"{path}.{key}" if path else str(key)
                if OmegaConf.is_missing(node, key):
                    if child not in FILLED_IN:
                        found.append(f"{child} is required and has no value: set it, e.g. "
                                     f"{child}=... on the command line.")
                else:
                    walk(node._get_node(key), child)

    walk(cfg, "")
    return found


def _values(node: DictConfig) -> dict[str, tuple[Any, str | None]]:
    """The arguments a node passes to its target: resolved plain values, each with the key it
    was interpolated from (None if none); missing values (``???``, filled in later) and nested
    targets are left out."""
    values = {}
    for key in node:
        child = node._get_node(key)
        if key in HYDRA_KEYS or OmegaConf.is_missing(node, key) or (
                isinstance(child, DictConfig) and "_target_" in child):
            continue
        try:
            value = node[key]
        except (MissingMandatoryValue, InterpolationToMissingValueError):  # filled in later
            continue
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_object(value)
        source = None
        if child._is_interpolation():
            resolved = child._maybe_dereference_node()
            source = resolved._get_full_key(None) if resolved is not None else None
        values[key] = (value, source)
    return values


def problems(cfg: DictConfig) -> list[str]:
    """Every key of every ``_target_`` node that its target does not take, or whose value its
    annotations refuse (once, at the key it was written at when it was interpolated); and every
    optional integration chosen but not installed."""
    from vae_lightning.args import problems as argument_problems

    found: dict[str, str] = {key: key for key in _missing(cfg)}
    for path, node in target_nodes(cfg):
        try:
            target = get_object(node._target_)
        except Exception:
            found[f"{path}._target_"] = (f"{path}._target_={node._target_!r} cannot be imported; "
                                         "check its spelling.")
            continue
        values = _values(node)
        plain_values = {key: value for key, (value, _) in values.items()}
        for name, value, accepted in argument_problems(target, plain_values):
            source = values[name][1] if name in values else None
            key = source or f"{path}.{name}"
            via = f", as {path}.{name}" if source else ""
            found.setdefault(key, f"{key}={_show(value)} is not allowed: {accepted} "
                                  f"({node._target_}{via}).")
        modules, extra = EXTRAS.get(node._target_, ((), None))
        if modules and not any(map(_installed, modules)):
            found[path] = (f"{path} ({node._target_}) needs the {modules[0]} package, which is "
                           f'not installed: pip install "vae-lightning[{extra}]".')
    return list(found.values())


def check(cfg: DictConfig) -> None:
    """Raise one ``ConfigError`` listing every problem of ``cfg`` (see ``problems``)."""
    try:
        found = problems(cfg)
    except OmegaConfBaseException as err:  # an interpolation that cannot be resolved
        raise ConfigError(f"Invalid configuration: {_omegaconf_message(err)}") from None
    if found:
        raise ConfigError("Invalid configuration:\n  - " + "\n  - ".join(found))


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)``, with an error raised by a constructor
    reported as a ``ConfigError`` naming the key of the node that raised it."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, UserError) and not isinstance(cause, ConfigError):
            raise cause from None  # e.g. a DataError: its own message, its own exit code
        where = re.search(r"full_key: (\S+)", str(err))
        full_key = where.group(1) if where else key
        if full_key != key and not full_key.startswith(key + "."):
            full_key = f"{key}.{full_key}"
        raise ConfigError(f"Invalid configuration: {_described(full_key, cause, err)}") from None
    except (ValueError, TypeError) as err:
        if isinstance(err, UserError) and not isinstance(err, ConfigError):
            raise
        raise ConfigError(f"Invalid configuration: {key}: {err}") from None


def _described(key: str, cause: BaseException | None, err: InstantiationException) -> str:
    """What a constructor refused, each argument named by its config key."""
    from vae_lightning.args import ArgumentError

    if isinstance(cause, ArgumentError):
        return "; ".join(f"{key}.{name}={_show(value)} is not allowed: {accepted}"
                         for name, value, accepted in cause.problems) + f" ({cause.owner})."
    return f"{key}: {_cause(err)}"


def _cause(err: InstantiationException) -> str:
    cause = err.__cause__
    if cause is None:
        return str(err).splitlines()[0]
    return str(cause).strip().splitlines()[0] or type(cause).__name__


def _omegaconf_message(err: OmegaConfBaseException) -> str:
    return str(err).strip().splitlines()[0]


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, list | tuple) else str(list(value))


def _installed(module: str) -> bool:
    from importlib.util import find_spec

    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        return False


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python, without Hydra's node: what a checkpoint stores."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return data
