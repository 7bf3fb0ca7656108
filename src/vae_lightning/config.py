"""The configuration built by Hydra, and stored: a constructor's error while building is
reported as a ``ConfigError`` naming the key of the node that raised it (each argument of an
``ArgumentError`` by its own key), as the checks before building (``config_checks``) report theirs;
``plain`` is the resolved config a checkpoint stores.

Importing this module imports no torch (``--help`` and ``--cfg job`` stay fast).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import vae_lightning.resolvers  # noqa: F401  (registers the resolvers the configs use)
from vae_lightning.errors import ConfigError, UserError

log = logging.getLogger(__name__)


def dotted(path: str, name: str) -> str:
    """The config key of ``name`` under the node at ``path`` ("" for the config's root: the
    top-level keys of vae-sample's and vae-encode's configs are named as typed, ``n=0``)."""
    return f"{path}.{name}" if path else str(name)


def instantiate_node(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)``, with an error raised by a constructor
    reported as a ``ConfigError`` naming the key of the node that raised it (``key``: its
    path, "" for the config's root)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, UserError) and not isinstance(cause, ConfigError):
            raise cause from None  # e.g. a DataError: its own message, its own exit code
        where = re.search(r"full_key: (\S+)", str(err))
        full_key = where.group(1) if where else key
        if key and full_key != key and not full_key.startswith(key + "."):
            full_key = dotted(key, full_key)
        raise ConfigError(f"Invalid configuration: {_described(full_key, cause, err)}") from None
    except (ValueError, TypeError) as err:
        if isinstance(err, UserError) and not isinstance(err, ConfigError):
            raise
        raise ConfigError(f"Invalid configuration: {f'{key}: {err}' if key else err}") from None


def _described(key: str, cause: BaseException | None, err: InstantiationException) -> str:
    """What a constructor refused, each argument named by its config key."""
    from vae_lightning.args import ArgumentError

    if isinstance(cause, ArgumentError):
        return "; ".join(f"{dotted(key, name)}={_show(value)} is not allowed: {accepted}"
                         for name, value, accepted in cause.problems) + f" ({cause.owner})."
    return f"{key}: {_cause(err)}" if key else _cause(err)


def _cause(err: InstantiationException) -> str:
    cause = err.__cause__
    if cause is None:
        return str(err).splitlines()[0]
    return str(cause).strip().splitlines()[0] or type(cause).__name__


def _show(value: Any) -> str:
    if value is None:
        return "null"
    return repr(value) if not isinstance(value, list | tuple) else str(list(value))


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python, without Hydra's node: what a checkpoint stores."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return data
