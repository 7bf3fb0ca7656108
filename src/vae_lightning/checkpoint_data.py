"""The data of a checkpoint's model, found where the user keeps them and checked against the
checkpoint's record of them: what ``vae-eval`` scores and ``vae-sample`` fits its samplers to.

The data are the user's to name, never the checkpoint's: the checkpoint says which of this
package's data sets the model was trained on and with which options (its shape, scale,
binarization, splits), but where the files are is ``data_root`` / ``data_path`` (default: the
run's own record, ``<run>/.hydra/config.yaml``, else the data root of the configs,
``$VAE_DATA_DIR`` or ``data``); nothing is downloaded and no loader workers start. The split read
is checked against the checkpoint's record of the data (size and SHA-256): other data are
refused unless ``allow_other_data``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vae_lightning import rundir
from vae_lightning.args import ArgumentError, PositiveInt, locations, problems
from vae_lightning.checkpoints import DATA_KEY, data_differences
from vae_lightning.config import dotted
from vae_lightning.data.datamodules import default_root
from vae_lightning.data.download import DataNotFoundError
from vae_lightning.errors import CheckpointError, ConfigError, DataError
from vae_lightning.files import kind, open_regular
from vae_lightning.rebuild import build_trusted, trusted_class

log = logging.getLogger(__name__)

STAGES = {"train": "fit", "val": "validate", "test": "test"}  # the setup that reads each split


def checked_data(config: dict[str, Any], checkpoint: dict[str, Any], ckpt_path: str,
                 split: str, key: str, *, trusted: Sequence[str] = (),
                 data_root: str | None = None, data_path: str | None = None,
                 allow_other_data: bool = False, batch_size: int = 100
                 ) -> tuple[Any, dict[str, Any], bool | None]:
    """The data module of the checkpoint's data set and options, set up to read ``split``
    (``train``, ``val``, ``test``) from where the user keeps the data (``find_data``); where that
    is; and whether the split read is the one the checkpoint was trained with (None: the
    checkpoint records no identity). Other data are refused unless ``allow_other_data``.
    ``key``: the config node these options belong to (``eval``; "" for vae-sample's and
    vae-encode's, top-level), which the messages name."""
    datamodule, source = find_data(config, ckpt_path, key, trusted=trusted, data_root=data_root,
                                   data_path=data_path, batch_size=batch_size)
    datamodule.setup(STAGES[split])
    matches = _check_data(checkpoint, datamodule, ckpt_path, source, split, key,
                          allow_other_data)
    return datamodule, source, matches


def load_datamodule(ckpt_path: str | Path, split: str = "test", *,
                    data_root: str | os.PathLike | None = None,
                    data_path: str | os.PathLike | None = None, trusted: Sequence[str] = (),
                    allow_other_data: bool = False, batch_size: PositiveInt = 100) -> Any:
    """The data module a checkpoint's model was trained on, built with the run's own data
    options (binarization, scale, validation split, labels) and set up to read ``split``: real
    images as the model takes them, in Python, without repeating those options by hand
    (``data.to_inputs(batch)`` gives ``[B, C, H, W]`` in [0, 1]). Found and checked as vae-eval
    finds and checks them (``checked_data``): ``data_root`` / ``data_path`` where the files are
    (default: the run's record, else ``$VAE_DATA_DIR`` or ``./data``); other data than the
    checkpoint records are refused unless ``allow_other_data``; ``trusted`` as for
    ``VAE.load_from_checkpoint``. Errors are ``UserError``s, one paragraph each."""
    from vae_lightning.checkpoints import read_checkpoint, run_config

    if split not in STAGES:
        raise ConfigError(f"split={split!r} is not allowed: expected one of {', '.join(STAGES)}.")
    # This call's own arguments, named as given (a batch_size of 0 was the checkpoint's fault:
    # "its data config cannot be built: eval_batch_size=0").
    found = problems(load_datamodule, {"data_root": data_root, "data_path": data_path,
                                       "allow_other_data": allow_other_data,
                                       "batch_size": batch_size})
    if found:
        raise ConfigError(str(ArgumentError("vae_lightning.load_datamodule", found)))
    checkpoint = read_checkpoint(ckpt_path)
    config = run_config(checkpoint, ckpt_path)
    return checked_data(config, checkpoint, str(ckpt_path), split, "", trusted=trusted,
                        data_root=data_root, data_path=data_path,
                        allow_other_data=allow_other_data, batch_size=batch_size)[0]


def read_from(source: Any) -> Any:
    """Where the data of a ``find_data`` source were read from (its ``data.root`` /
    ``data.path``, normalised), without how that place was found (command line, run record,
    default): the same folder named with eval.data_root, or found through the run's record, is
    the same data (a stopped evaluation run again with eval.data_root started over, its batches
    set aside; eval.bounds=false refused the eval.json of the same data)."""
    if not isinstance(source, dict):
        return source
    return {key: None if value is None else os.path.normpath(str(value))
            for key, value in source.items() if key.startswith("data.")}


def find_data(config: dict[str, Any], ckpt_path: str, key: str, *, trusted: Sequence[str] = (),
              data_root: str | None = None, data_path: str | None = None,
              batch_size: int = 100) -> tuple[Any, dict[str, Any]]:
    """The data module of the checkpoint's data set and options (not set up), reading from where
    the user keeps the data (``data_root`` / ``data_path``, else the run's record, else the
    default), ``batch_size`` images a batch, and where that is."""
    node = config.get("data")
    if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
        raise CheckpointError(f"Checkpoint {ckpt_path} names no data set (its run config "
                              "has no data._target_).")
    module = trusted_class(node, "data", ckpt_path, trusted)
    record = _run_record_data(rundir.of_checkpoint(ckpt_path))
    given = {"root": data_root, "path": data_path}
    source: dict[str, Any] = {}
    values = dict(node)
    ignored = [name for name, value in given.items()
               if value is not None and name not in locations(module)]
    if ignored:  # e.g. a file for MNIST, which is read from its folder under data_root
        accepted = " or ".join(f"{dotted(key, f'data_{name}')}" for name in locations(module))
        raise ConfigError(
            f"{dotted(key, f'data_{ignored[0]}')}={given[ignored[0]]!r}: the model was trained "
            f"on {module.__name__}, which does not read its data from a {ignored[0]}; "
            f"{'name where they are with ' + accepted if accepted else 'it takes neither'}.")
    for name in locations(module):
        if given.get(name) is not None:
            values[name], source[name] = given[name], "command line"
        elif record.get(name) is not None:
            values[name], source[name] = record[name], "run record"
        elif name == "root":
            values[name], source[name] = default_root(), "default"
        else:
            values.pop(name, None)
            source[name] = "default"
        source[f"data.{name}"] = values.get(name)
    # Switches that make the data module fetch, write or spawn: off.
    values.update(download=False, num_workers=0, on_device=False, steps_per_batch=1,
                  eval_batch_size=batch_size)
    try:
        return build_trusted(values, "data", ckpt_path, trusted), source
    except DataNotFoundError as err:
        relative = [name for name in locations(module) if source.get(name) == "run record"
                    and not Path(str(values[name])).expanduser().is_absolute()]
        if not relative:
            raise
        name = relative[0]
        raise DataNotFoundError(
            f"{err} The run's record gives data.{name}={values[name]!r}, a relative path, read "
            f"from the directory this command runs in ({Path.cwd()}): run it from the "
            f"directory the run was started in, or name the data with "
            f"{dotted(key, f'data_{name}')}=...") from None
    except CheckpointError as err:
        if "path" in str(err) and data_path is None:
            record = _record_file(rundir.of_checkpoint(ckpt_path))
            where = ("the run's record does not give" if record.exists() else
                     f"that no run record beside it gives (no {record}: an exported model, or "
                     "one moved out of its run)")
            # The checkpoint's own path is shown, never read: a file does not choose what is
            # read (an exported model's data.path pointed the newcomer to nothing else).
            written = node.get("path")
            said = (f" (its run read data.path={written!r}; the checkpoint's own word for it "
                    "is not followed)" if isinstance(written, str) else "")
            raise ConfigError(
                f"{err} The model was trained on data={node.get('_target_')} read from a "
                f"path {where}: name it with {dotted(key, 'data_path')}=...{said}") from None
        raise


def _check_data(checkpoint: dict[str, Any], datamodule: Any, ckpt_path: str,
                source: dict[str, Any], split: str, key: str,
                allow_other_data: bool) -> bool | None:
    """Whether the ``split`` read is the one the checkpoint was trained and tested with (None:
    the checkpoint records no identity); other data are refused unless ``allow_other_data``."""
    identity = datamodule.identity()
    identity["splits"] = {s: v for s, v in identity["splits"].items() if s == split}
    differences = data_differences(checkpoint, identity)
    if differences is None:
        log.warning("Checkpoint %s records no identity of its data (written by an older "
                    "version): the %s data read from %s are not checked.", ckpt_path,
                    split, _where(source))
        return None
    saved_shape = (checkpoint.get(DATA_KEY) or {}).get("shape")
    if saved_shape is not None and identity.get("shape") != saved_shape:
        raise DataError(  # no allow_other_data: the model's networks take images of its shape
            f"The {split} data read from {_where(source)} are images of shape "
            f"{identity.get('shape')}, and the model of checkpoint {ckpt_path} takes images of "
            f"shape {saved_shape}: it cannot read them, even with "
            f"{dotted(key, 'allow_other_data')}=true. Name data of that shape with "
            f"{dotted(key, 'data_root')}=... (or {dotted(key, 'data_path')}=...).")
    if differences and not allow_other_data:
        raise DataError(
            f"The {split} data read from {_where(source)} are not the data checkpoint "
            f"{ckpt_path} was trained with: {'; '.join(differences)}. Name the right data "
            f"with {dotted(key, 'data_root')}=... (or {dotted(key, 'data_path')}=...), or use "
            f"these data anyway with {dotted(key, 'allow_other_data')}=true.")
    if differences:
        log.warning("Using other data than the checkpoint's (%s): %s.",
                    dotted(key, "allow_other_data"), "; ".join(differences))
    return not differences


def _where(source: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value} ({source[key[5:]]})" for key, value in source.items()
                     if key.startswith("data.")) or "the data module's defaults"


def _record_file(run: Path) -> Path:
    """The run's own record of its config, written by Hydra when it started."""
    return run / rundir.HYDRA / "config.yaml"


def _run_record_data(run: Path) -> dict[str, str]:
    """The data locations (root, path, ...) of the run's own record, ``.hydra/config.yaml``
    written when it started, read as plain YAML: plain strings, and ``${oc.env:NAME,default}``
    looked up in the environment; any other interpolation is not resolved (left out)."""
    import yaml

    record = _record_file(run)
    if kind(record) is not None:
        return {}
    try:
        with open_regular(record, DataError, "a YAML file") as file:
            data = (yaml.safe_load(file) or {}).get("data") or {}
    except (yaml.YAMLError, AttributeError, DataError):
        return {}
    found = {}
    for key, value in data.items() if isinstance(data, dict) else ():
        if isinstance(value, str):
            env = re.fullmatch(r"\$\{oc\.env:(\w+)(?:,([^}]*))?\}", value.strip())
            if env:
                found[key] = os.environ.get(env.group(1), env.group(2) or None)
            elif "${" not in value:
                found[key] = value
    return found
