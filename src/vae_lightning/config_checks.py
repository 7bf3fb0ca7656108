"""The configuration checked before anything is built: every config node with a ``_target_``
against the target's own signature (``vae_lightning.args``: names, types, ``Literal`` choices and
ranges written in the annotations), so a run with bad input stops before training with one message
listing every problem by its config key.

Importing this module imports no torch (``--help`` and ``--cfg job`` stay fast).
"""

from __future__ import annotations

import importlib
import re
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

from hydra._internal.utils import _locate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    InterpolationToMissingValueError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from vae_lightning.config import _show, dotted
from vae_lightning.errors import ConfigError
from vae_lightning.groups import EXTRAS, group_hint, group_of, groups, installed

HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}

def target_nodes(node: Any, path: str = "") -> list[tuple[str, DictConfig]]:
    """Every config node with a ``_target_``, with its dotted key (the hydra node excluded)."""
    if not isinstance(node, DictConfig):
        return []
    found = [(path, node)] if "_target_" in node else []
    for key in node:
        if path == "" and key == "hydra":
            continue
        found += target_nodes(node._get_node(key), dotted(path, key))
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
                child = dotted(path, key)
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


def why_not_importable(name: str) -> str:
    """Why the dotted ``name`` cannot be imported, in words: no module of its first part (one
    of one's own not on the path), a module without that attribute (a misspelling), or the
    error a module raised while it was imported."""
    parts = name.split(".")
    obj, i = None, 0
    while i < len(parts):  # the longest prefix that is a module, imported shortest first
        module_name = ".".join(parts[:i + 1])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                return f"importing {module_name} raised {type(err).__name__}: {err}"
            break
        except Exception as err:
            return f"importing {module_name} raised {type(err).__name__}: {err}"
        i += 1
    if obj is None:
        # The commands put their script's folder on sys.path, not the current one: a
        # module of one's own is found through PYTHONPATH, even from its own folder.
        return (f"there is no module {parts[0]}: check its spelling, or, for a module of your "
                "own, put the folder that holds it on PYTHONPATH (PYTHONPATH=<folder> vae-train "
                "...)")
    for j in range(i, len(parts)):
        if not hasattr(obj, parts[j]):
            return f"{'.'.join(parts[:j])} has no {parts[j]}; check its spelling"
        obj = getattr(obj, parts[j])
    return "it is importable now"  # imported on a second try


def problems(cfg: DictConfig) -> list[str]:
    """Every key of every ``_target_`` node that its target does not take, or whose value its
    annotations refuse (once, at the key it was written at when it was interpolated); a part
    (``model.prior``, a callback) set to a plain value where its config belongs; every optional
    integration chosen but not installed; and the run's own settings (``SETTINGS``)."""
    from vae_lightning.args import problems as argument_problems

    found: dict[str, str] = {key: key for key in _missing(cfg)}
    found.update(_setting_problems(cfg))
    found.update(_part_problems(cfg))
    swapped = _swapped_targets()
    for path, node in target_nodes(cfg):
        try:
            target = _locate(node._target_)
        except Exception:
            key = dotted(path, "_target_")
            found[key] = (f"{key}={node._target_!r} cannot be imported: "
                          f"{why_not_importable(node._target_)}.")
            continue
        values = _values(node)
        plain_values = {key: value for key, (value, _) in values.items()}
        for name, value, accepted in argument_problems(target, plain_values):
            source = values[name][1] if name in values else None
            key = source or dotted(path, name)
            via = f", as {dotted(path, name)}" if source else ""
            found.setdefault(key, f"{key}={_show(value)} is not allowed: {accepted} "
                                  f"({node._target_}{via}).")
            if accepted.startswith("not an argument") and path in swapped:
                found.setdefault(dotted(path, "_target_"), _swap_hint(path, node))
            elif accepted.startswith("not an argument") and (hint := _experiment_hint(key)):
                found[key] += hint
        for name, value in plain_values.items():
            part = _part(target, name)
            if part is not None and (value is not None or not part[1]):
                found.setdefault(dotted(path, name), _not_a_part(dotted(path, name), value,
                                                                 part[0]))
        modules, extra = EXTRAS.get(node._target_, ((), None))
        if modules and not any(map(installed, modules)):
            found[path] = (f"{path} ({node._target_}) needs the {modules[0]} package, which is "
                           f'not installed: pip install "vae-lightning[{extra}]".')
    found.update(_stopping_problems(cfg))
    return list(found.values())


def _swapped_targets() -> set[str]:
    """The nodes whose ``_target_`` the command line changed (``<node>._target_=...``)."""
    from vae_lightning.sweeps import overrides

    return {item.split("=", 1)[0].lstrip("+~")[:-len("._target_")] for item in overrides()
            if item.split("=", 1)[0].endswith("._target_")}


def _experiment_hint(key: str) -> str:
    """Where a key no argument takes came from when the command did not give it but chose an
    experiment: the preset set it for the part it chose, which the command replaced (e.g.
    ``experiment=conv_ladder_mnist model/objective=iwae`` keeps the preset's warm-up steps)."""
    from vae_lightning.sweeps import overrides

    given = {item.split("=", 1)[0].lstrip("+~") for item in overrides()}
    chosen = [item.split("=", 1)[1] for item in overrides() if item.startswith("experiment=")]
    if key in given or not chosen:
        return ""
    return (f" It comes from experiment={chosen[0]}, which set it for the part this command "
            f"replaced: drop it with ~{key}.")


def _swap_hint(path: str, node: DictConfig) -> str:
    """Why a node whose target was swapped on the command line has keys its new target does not
    take, and how to swap it (Hydra merges a node given on the command line into the old one,
    and cannot delete a key whose value is null)."""
    partial = ", _partial_: true" if node.get("_partial_") else ""
    return (f"{path}._target_ was changed on the command line, so {path} keeps the keys of the "
            f"target it replaced: replace the whole node instead, {path}=null "
            f"'{path}={{_target_: {node._target_}{partial}, <its arguments>}}', or choose a "
            "config option of its group.")


# The run's own settings (train.yaml): the values each accepts, in words.
SETTINGS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "tags": (lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v),
             "a list of strings, e.g. tags=[baseline,frey]"),
    # "" was a ValueError traceback from Lightning's fit (vae-train), "Checkpoint . is a
    # directory" elsewhere; null is a fresh run (vae-train), refused where one is required.
    "ckpt_path": (lambda v: v is None or isinstance(v, str) and v.strip() != "",
                  "a checkpoint file's path (vae-train: also last, or null for a fresh run)"),
    "extras.ignore_warnings": (lambda v: isinstance(v, bool), "true or false"),
    "extras.print_config": (lambda v: isinstance(v, bool), "true or false"),
    # results.json's metrics (train.py): the training bound, and each term of the validation
    # and test bounds (metrics.TERMS, BITS); a step's train/loss or train/kl never reaches it,
    # and a sweep's every trial would train in full before failing on it.
    "optimized_metric": (lambda v: isinstance(v, str) and re.fullmatch(
                             r"train/elbo|(val|test)/(elbo|recon|kl|bits_per_dim)", v)
                         is not None, "a metric of results.json: train/elbo, or val/ or test/ "
                                      "with elbo, recon, kl or bits_per_dim, e.g. val/elbo"),
}
_UNSET = object()


def _setting_problems(cfg: DictConfig) -> dict[str, str]:
    found = {}
    for key, (accepts, accepted) in SETTINGS.items():
        value = OmegaConf.select(cfg, key, default=_UNSET)
        if value is _UNSET:
            continue
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_object(value)
        if not accepts(value):
            found[key] = f"{key}={_show(value)} is not allowed: expected {accepted}."
    extras = cfg.get("extras")
    if extras is not None and not isinstance(extras, DictConfig):
        found["extras"] = (f"extras={_show(extras)} is not allowed: expected a mapping of "
                           f"{', '.join(k[7:] for k in SETTINGS if k.startswith('extras.'))}.")
    for key in extras if isinstance(extras, DictConfig) else ():
        if f"extras.{key}" not in SETTINGS:
            found[f"extras.{key}"] = (
                f"extras.{key} is not a setting; accepted: "
                f"{', '.join(k[7:] for k in SETTINGS if k.startswith('extras.'))}.")
    for key in cfg:  # a nested group's name as a top-level key (+prior=vamp)
        hint = group_hint(str(key), cfg._get_node(key)._value())
        if hint is not None:
            found[str(key)] = hint
        elif (unread := _unpackaged(str(key), cfg._get_node(key))) is not None:
            found[str(key)] = unread
    return found


def _unpackaged(key: str, node: Any) -> str | None:
    """For a global group's option of the user's own (``hydra.searchpath``) that lacks the line
    ``# @package _global_``: Hydra places its keys under the group's name (``hparams_search:
    {hydra: ...}``), where nothing reads them, and the run went on without them (a search file's
    parameters silently not searched). None where ``key`` is no such placement (``data``'s own
    node, with its ``_target_``)."""
    group = groups().get(key)
    if group is None or group.package is not None or not isinstance(node, DictConfig) \
            or "_target_" in node:
        return None
    from hydra.core.hydra_config import HydraConfig

    choice = (HydraConfig.get().runtime.choices.get(key) if HydraConfig.initialized()
              else None) or "<option>"
    keys = ", ".join(str(k) for k in node)
    return (f"{key}={choice}: its file's keys ({keys}) were placed under {key}, where nothing "
            f"reads them: a {key} option is global, so begin its file with the line "
            f"`# @package _global_`, as the shipped {key} options do.")


def _part(target: Any, name: str) -> tuple[str, bool] | None:
    """For an argument of ``target`` that is built from a config node of its own (a class of
    this package, or a callable such as a network or an optimizer): what it builds and whether
    it may be None; None for a plain argument."""
    from vae_lightning.args import _signature

    hint = _signature(target)[1].get(name)
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    arms = (typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType)
            else (hint,))
    parts = [arm for arm in arms if arm is not type(None)]
    if not parts or not all(map(_builds, parts)):
        return None
    what = " or ".join(getattr(p, "__name__", None) or "callable" for p in parts)
    return what, len(parts) < len(arms)


def _builds(hint: Any) -> bool:
    """Whether an argument of type ``hint`` comes from a config node: a class of this package
    or a callable."""
    if hint is Callable or typing.get_origin(hint) is Callable:
        return True
    return isinstance(hint, type) and hint.__module__.startswith("vae_lightning.")


def _not_a_part(key: str, value: Any, what: str) -> str:
    """The message for a part (``model.prior``) set to a plain value instead of its config."""
    group = group_of(key)
    choose = (f"; choose one with {group[0]}=<option> ({', '.join(group[1].options)}), and "
              f"change one of its settings with {key}.<setting>=<value>" if group else "")
    return (f"{key}={_show(value)} is not allowed: expected a config with _target_ ({what})"
            f"{choose}.")


def _part_problems(cfg: DictConfig) -> dict[str, str]:
    """The callbacks and loggers: a mapping of configs with ``_target_``, each or null."""
    found = {}
    for key in ("callbacks", "logger"):
        node = cfg.get(key)
        if node is None:
            continue
        if not isinstance(node, DictConfig):
            found[key] = (f"{key}={_show(node)} is not allowed: expected a mapping of configs "
                          f"with _target_ (the {key} group's options: "
                          f"{', '.join(groups()[key].options)}).")
            continue
        for name in node:
            child = node._get_node(name)
            if child._is_none():
                continue
            if not isinstance(child, DictConfig) or "_target_" not in child:
                value = (OmegaConf.to_object(child) if isinstance(child, DictConfig | ListConfig)
                         else child._value())
                found[f"{key}.{name}"] = (
                    f"{key}.{name}={_show(value)} is not allowed: expected a config with "
                    f"_target_ (e.g. conf/{key}/*.yaml), or null to leave it out.")
    return found


def _without(cfg: DictConfig, split: str) -> str | None:
    """The setting that leaves a run without ``split`` (val or test) data, or None."""
    data, trainer = cfg.get("data"), cfg.get("trainer")
    return (f"data.{split}_size=0" if isinstance(data, DictConfig)
            and data.get(f"{split}_size") == 0
            else f"trainer.limit_{split}_batches=0"
            if isinstance(trainer, DictConfig) and trainer.get(f"limit_{split}_batches") == 0
            else None)


def _stopping_problems(cfg: DictConfig) -> dict[str, str]:
    """A callback that stops training on a validation metric, in a run without validation: it
    would fail at the first epoch's end, after training it. And an ``optimized_metric`` of a
    split the run does not score: the run would train in full, then fail (every trial of a
    sweep)."""
    without = _without(cfg, "val")
    found = {}
    metric = cfg.get("optimized_metric")
    split = metric.split("/")[0] if isinstance(metric, str) else None
    if split in ("val", "test") and (no_split := _without(cfg, split)) is not None:
        found["optimized_metric"] = (
            f"optimized_metric={metric} is a metric of the {split} split, which this run "
            f"does not score ({no_split}): choose train/elbo, or keep a {split} split.")
    for path, node in target_nodes(cfg.get("callbacks")) if without else ():
        if str(node._target_).endswith("EarlyStopping") and str(
                node.get("monitor", "")).startswith("val/"):
            found[f"callbacks.{path}"] = (
                f"callbacks.{path} stops on {node.monitor}, which a run without validation "
                f"({without}) never measures: leave it out (callbacks.{path}=null) or keep a "
                "validation split.")
    return found


def check(cfg: DictConfig) -> None:
    """Raise one ``ConfigError`` listing every problem of ``cfg`` (see ``problems``)."""
    try:
        found = problems(cfg)
    except OmegaConfBaseException as err:  # an interpolation that cannot be resolved
        where = _unresolved(cfg, err)
        raise ConfigError(f"Invalid configuration: {where}{_omegaconf_message(err)}") from None
    if found:
        raise ConfigError("Invalid configuration:\n  - " + "\n  - ".join(found))


def _unresolved(cfg: DictConfig, err: OmegaConfBaseException) -> str:
    """``"<key>=<its value> cannot be resolved: "`` for the key whose interpolation ``err`` is
    the failure of (OmegaConf names the interpolating key only in a later line, and none at all
    for a resolver's failure, ``oc.env`` of an unset variable): its ``full_key``, else the first
    failing key that calls a resolver, else the first failing key; "" if none fails."""
    failing = dict(_failing(cfg))
    named = getattr(err, "full_key", None)
    key = (named if named in failing else
           next((k for k, v in failing.items() if re.search(r"\$\{\w[\w.]*:", str(v))),
                next(iter(failing), None)))
    return "" if key is None else f"{key}={failing[key]} cannot be resolved: "


def _failing(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf under ``node`` whose value cannot be resolved, with its unresolved value."""
    keys = range(len(node)) if isinstance(node, ListConfig) else list(node)
    for key in keys:
        path = (f"{prefix}[{key}]" if isinstance(node, ListConfig)
                else dotted(prefix, str(key)) if prefix else str(key))
        child = node._get_node(key)
        if isinstance(child, DictConfig | ListConfig) and not child._is_interpolation():
            yield from _failing(child, path)
            continue
        try:
            node[key]
        except (MissingMandatoryValue, InterpolationToMissingValueError):
            continue  # ??? until the run sets it (model.data_shape): not a failure
        except OmegaConfBaseException:
            yield path, child._value()


def _omegaconf_message(err: OmegaConfBaseException) -> str:
    """The first line of OmegaConf's message, without the prefix it puts before a resolver's
    own message (``resolvers``: those say what is wrong in words)."""
    line = str(err).strip().splitlines()[0]
    return re.sub(r"^\w+ raised while resolving interpolation: ", "", line)
