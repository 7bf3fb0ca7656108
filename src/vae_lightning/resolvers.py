"""OmegaConf resolvers used by the configs; importing this module registers them (no torch).

- ``${sweep_group:}``: under a Hydra multirun, the sweep directory (``hydra.sweep.dir``, e.g.
  ``multirun/2026-01-31/12-00-00``), shared by every job of the sweep; ``null`` otherwise. The W&B
  logger uses it as the run group, so the jobs of one sweep appear together.
- ``${run_dir_of:${ckpt_path},<default>}``: the directory a run writes to: a resumed run's own
  (``<run>`` for ``<run>/checkpoints/x.ckpt``; for ``last``, the newest run under the default's
  root, ``outputs/`` for ``outputs/<date>/<time>``: ``rundir.last_run``), else ``<default>``.
- ``${run_path:<part>}``: ``<output_dir>/<part>`` of the run-directory layout (``rundir``).
- ``${run_record:${hydra.runtime.output_dir}}``: Hydra's ``output_subdir``: ``.hydra`` for a
  fresh run directory, null for one that holds a run already (``rundir.record_dir``).
- ``${sqlite:<path>}``: the SQLAlchemy URL of a SQLite file, its folder created (Optuna's study).
- ``${study_seed:${seed},${hydra.sweeper.storage},${hydra.sweeper.study_name}}``: the seed of an
  Optuna study's sampler: ``seed`` plus the trials the study's SQLite file already holds.
- ``${sum:${.layers}}``: the sum of a list of numbers (``model=hierarchy``: the latent size is
  the sum of the stochastic layers' sizes); ``${first:${.layers}}`` its first item (the size of
  z_1, which the decoder reads).
- ``${config_groups:}``: the config groups and their options, one line each, for ``--help``
  (``groups.groups``: the bases a group's options start from, named ``_*``, are not options).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from vae_lightning import rundir


def sweep_group() -> str | None:
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    return str(hydra.sweep.dir) if hydra.mode == RunMode.MULTIRUN else None


def run_dir_of(ckpt_path: str | None, default: str) -> str:
    if ckpt_path is None:
        return default
    if ckpt_path == rundir.LAST_KEYWORD:
        return str(rundir.last_run(default))
    path = Path(ckpt_path)
    return str(path.parent.parent) if path.parent.name == rundir.CHECKPOINTS else default


def run_path(part: str, *, _root_) -> str:
    return str(rundir.path(_root_.output_dir, part))


def sqlite(path: str) -> str:
    file = Path(path).resolve()
    file.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{file}"


def study_seed(seed, storage, study_name):
    """``seed`` plus the number of trials the Optuna study ``study_name`` already holds in its
    SQLite ``storage`` (modulo 2^32, NumPy's seed range): a resumed study's sampler, seeded as
    at its start, drew the parameters of the study's first trials again, trial for trial
    (its random start repeats), so the trials "added" by running the command again were
    repeats. ``seed`` itself for a new study, another storage, or a file without a study yet
    (one that is no database is refused before: ``sweeps.check_study``)."""
    url = str(storage or "")
    if isinstance(seed, bool) or not isinstance(seed, int) or not url.startswith("sqlite:///"):
        return seed
    path = Path(url[len("sqlite:///"):])
    if not path.is_file():
        return seed
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro",
                                                uri=True)) as db:
            (count,) = db.execute(
                "SELECT COUNT(*) FROM trials JOIN studies ON trials.study_id = studies.study_id "
                "WHERE studies.study_name = ?", (str(study_name),)).fetchone()
    except sqlite3.Error:  # no tables yet (Optuna creates them), or not Optuna's
        return seed
    return (seed + count) % 2**32


def _listed(values) -> bool:
    """Whether ``values`` is a list (not a number, a string, a mapping or null): what ``sum``
    and ``first`` read; anything else resolves to null, which the key's own class refuses,
    naming the list's key and value (a bare "'int' object is not iterable" named neither)."""
    return isinstance(values, Sequence) and not isinstance(values, str)


def total(values) -> int | float | None:
    if not _listed(values) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return None  # e.g. layers=[a, b]: "unsupported operand type(s) for +" before
    return sum(values)


def first(values, _node_):
    """The first item of a list (indexing an empty one raised OmegaConf's 'key not found',
    naming neither the list nor what it must hold)."""
    if not _listed(values):
        return None
    if not len(values):
        key = _node_._get_full_key(None)
        relative = str(_node_._value()).removeprefix("${first:${").removesuffix("}}")
        up = len(relative) - len(relative.lstrip("."))  # .x: a sibling; ..x: the parent's
        source = ".".join([*key.split(".")[:-up], relative[up:]]) if up else relative
        raise ValueError(f"{source}=[] is empty, and {key} is its first "
                         "item: give one or more sizes, the first the size of z_1 (read by the "
                         "decoder), e.g. [100, 50].")
    return values[0]


def config_groups(searchpath=()) -> str:
    """The config groups and their options, one line each: the package's, with those of the
    folders of ``hydra.searchpath`` (``file://...``) added, as Hydra composes them."""
    from vae_lightning.groups import groups, groups_in

    options = {path: list(group.options) for path, group in groups().items()}
    for entry in searchpath or ():
        folder = Path(str(entry).removeprefix("file://"))
        if str(entry).startswith("file://") and folder.is_dir():
            for path, group in groups_in(folder).items():
                options[path] = sorted({*options.get(path, ()), *group.options})
    return "\n".join(f"{path}: {', '.join(found)}" for path, found in sorted(options.items()))


for name, resolver in (("sweep_group", sweep_group), ("run_dir_of", run_dir_of),
                       ("run_path", run_path), ("run_record", rundir.record_dir),
                       ("sqlite", sqlite), ("study_seed", study_seed),
                       ("config_groups", config_groups),
                       ("sum", total), ("first", first)):
    OmegaConf.register_new_resolver(name, resolver, replace=True)
