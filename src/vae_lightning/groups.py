"""The config groups of the package's ``conf/`` (their options and where Hydra places them), and
the optional packages some options need: the Hydra plugins an extra installs and the targets that
need a package outside the default install. What the command line's hints and checks consult;
imports neither torch nor the rest of the config machinery, so that the resolvers can use it.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

# Optional integrations: a target that needs a package outside the default install, the modules
# that provide it (any one will do) and the extra that installs them.
EXTRAS = {
    "lightning.pytorch.loggers.TensorBoardLogger": (("tensorboard", "tensorboardX"), "tensorboard"),
    "vae_lightning.loggers.TensorBoardLogger": (("tensorboard", "tensorboardX"), "tensorboard"),
    "lightning.pytorch.loggers.MLFlowLogger": (("mlflow",), "mlflow"),
    "vae_lightning.loggers.MLFlowLogger": (("mlflow",), "mlflow"),
    "lightning.pytorch.callbacks.RichProgressBar": (("rich",), "rich"),
    "lightning.pytorch.callbacks.RichModelSummary": (("rich",), "rich"),
    "vae_lightning.callbacks.summary.RichModelSummary": (("rich",), "rich"),
    "vae_lightning.callbacks.ConfigTree": (("rich",), "rich"),
}


class Plugin(NamedTuple):
    """A Hydra plugin that an extra installs: the config options it adds (a group's option, or
    every option under a group ending in ``/``) and the modules it needs (all of them)."""

    options: tuple[str, ...]
    modules: tuple[str, ...]


PLUGINS = {
    "sweep": Plugin(("hydra/launcher/joblib",), ("hydra_plugins.hydra_joblib_launcher", "joblib")),
    "slurm": Plugin(("hydra/launcher/submitit_slurm", "hydra/launcher/submitit_local"),
                    ("hydra_plugins.hydra_submitit_launcher", "submitit")),
    "search": Plugin(("hydra/sweeper/optuna", "hydra/sweeper/sampler/"),
                     ("hydra_plugins.hydra_optuna_sweeper", "optuna", "sqlalchemy")),
}


def plugin_extra(option: str) -> str | None:
    """The extra that installs the Hydra plugin adding config ``option`` (e.g.
    ``hydra/launcher/joblib``: ``sweep``), if one does."""
    return next((extra for extra, plugin in PLUGINS.items() if any(
        option == known or (known.endswith("/") and option.startswith(known))
        for known in plugin.options)), None)


def missing_plugins(hydra: DictConfig) -> str | None:
    """What the launcher and sweeper chosen in ``hydra`` (Hydra's config) need and is not
    installed, as one sentence naming the extra to install; None when nothing is missing."""
    for key in ("launcher", "sweeper"):
        target = str(OmegaConf.select(hydra, f"{key}._target_", default="") or "")
        for extra, plugin in PLUGINS.items():
            if target.startswith(plugin.modules[0] + "."):
                missing = [m for m in plugin.modules if not installed(m)]
                if missing:
                    return (f"hydra/{key}={hydra.runtime.choices.get(f'hydra/{key}', key)} needs "
                            f"the {missing[0]} package, which is not installed: "
                            f'pip install "vae-lightning[{extra}]".')
    return None


class Group(NamedTuple):
    """A config group of ``conf/``: where its options go in the config (None: they are global,
    ``# @package _global_``) and their names."""

    package: str | None
    options: tuple[str, ...]


@functools.cache
def groups() -> dict[str, Group]:
    """The config groups of the package's ``conf/`` (Hydra's ``hydra/...`` left out), by path
    (``model/prior``), each with its package (an option's ``# @package`` line, else the path
    with dots, as Hydra places it) and its options."""
    return groups_in(resources.files("vae_lightning.conf"))


def groups_in(root: Any) -> dict[str, Group]:
    """The config groups of the config folder ``root`` (a path or a package resource), as
    ``groups`` reads the package's."""
    found: dict[str, Group] = {}

    def walk(folder: Any, path: str) -> None:
        options = sorted(item.name[:-5] for item in folder.iterdir() if item.is_file()
                         and item.name.endswith(".yaml") and not item.name.startswith("_"))
        if path and options:
            first = next(item for item in folder.iterdir() if item.name == options[0] + ".yaml")
            header = re.match(r"# @package (\S+)", first.read_text())
            package = header.group(1) if header else path.replace("/", ".")
            found[path] = Group(None if package == "_global_" else package, tuple(options))
        for item in folder.iterdir():
            if item.is_dir() and item.name not in ("hydra", "__pycache__"):
                walk(item, f"{path}/{item.name}" if path else item.name)

    walk(root, "")
    return found


def option_text(group: str, option: str) -> str:
    """The YAML of option ``option`` of config group ``group`` ("" if there is none)."""
    path = resources.files("vae_lightning.conf").joinpath(*group.split("/"), f"{option}.yaml")
    return path.read_text() if path.is_file() else ""


def group_hint(key: str, value: Any = None) -> str | None:
    """For ``key=value`` where ``key`` is not a group but names one further down (``prior``
    for ``model/prior``): one sentence with the override to use; else None."""
    nested = [path for path in groups() if path.split("/")[-1] == key and path != key]
    if not nested:
        return None
    path = nested[0]
    options = groups()[path].options
    choice = value if value in options else "<option>"
    return (f"{key}={value}: there is no top-level {key}; {key} is the config group {path}: "
            f"{path}={choice} (options: {', '.join(options)}).")


def group_of(key: str) -> tuple[str, Group] | None:
    """The config group whose options are placed at ``key`` (``model.prior``: ``model/prior``)."""
    return next(((path, group) for path, group in groups().items() if group.package == key),
                None)


def _model_choices(option: str, seen: tuple[str, ...] = ()) -> dict[str, str]:
    """The part options that model option ``option`` (``conf/model/<option>.yaml``) chooses by
    its defaults list's ``override <group>: <choice>`` lines, through the model options it builds
    on (``m2`` on ``cvae``), by group (``model/objective``): the later choice wins, as in Hydra."""
    text = option_text("model", option)
    if not text or option in seen:
        return {}
    chosen: dict[str, str] = {}
    defaults = OmegaConf.create(text).get("defaults") or []
    for entry in defaults:
        if isinstance(entry, str) and entry != "_self_":  # a model option it builds on
            chosen.update(_model_choices(entry, (*seen, option)))
        elif isinstance(entry, DictConfig):
            for key, choice in entry.items():
                if str(key).startswith("override ") and isinstance(choice, str):
                    chosen[f"model/{str(key)[len('override '):].strip()}"] = choice
    return chosen


@functools.cache
def bundled(group: str, option: str) -> tuple[str, ...]:
    """The model options (``model=m2``) that choose part ``option`` of ``group``
    (``model/objective``, ``m2``), with the parts it works with: the parts that work only with
    one another are chosen together by a model option, so that the knowledge of what goes with
    what is written once, in its defaults list."""
    return tuple(model for model in groups().get("model", Group(None, ())).options
                 if _model_choices(model).get(group) == option)


def bundle_hint(choices: Any) -> str | None:
    """For Hydra's choices of a run (``hydra.runtime.choices``): one sentence naming the model
    option that chooses a part the run chose under another model option (``model/objective=m2``
    under ``model=vae``); None where there is none. Said beside the errors of such a run: the
    part's own error (``model.classes=null``) does not say which companions it lacks."""
    model = choices.get("model")
    if model not in groups().get("model", Group(None, ())).options:
        return None  # a model option of one's own (hydra.searchpath): what it chooses is unread
    for group, option in choices.items():
        models = bundled(str(group), str(option)) if str(group).startswith("model/") else ()
        if models and model not in models:
            named = " or ".join(f"model={name}" for name in models)
            return (f"{group}={option} is chosen, with the parts it works with, by {named} "
                    f"(this run has model={model}): use {named}"
                    f" instead of {group}={option}.")
    return None


def installed(module: str) -> bool:
    from importlib.util import find_spec

    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        return False
