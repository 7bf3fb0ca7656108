"""Export a trained model's posterior locations: ``vae-encode
ckpt_path=<run>/checkpoints/last.ckpt`` (or ``python -m vae_lightning.encode ...``) writes
``locations.npz`` into the checkpoint's run directory (or ``out``), and ``locations.json``
beside it.

For each split s of ``splits``: ``x_<s>``, float32 ``[N, latent]``, the location of q(z|x) of
each data point (``Encoder.location``: a Gaussian posterior's mean), computed as vae-sample's
fitted samplers compute theirs (``sample.posterior_locations``), and ``y_<s>``, the split's
labels as the data module gives them (``evaluation_labels``: int64 ``[N]``, or float32
``[N, D]`` condition vectors), and ``s_<s>``, float32 ``[N, latent]``, q(z|x)'s standard
deviation per dimension, where the posterior family has one in closed form (``Family.stddev``),
and for data of one's own ``i_<s>``, int64 ``[N]``, each point's row in what the split was read
from (``evaluation_rows``: the file's array, the image files as sorted).
These are the features of Kingma et al. (2014)'s M1+M2: a VAE (M1) trained on the images, then
the semi-supervised M2 trained on M1's posterior, its training points drawn afresh from
N(x, s^2) at every minibatch (``data=array data.std_key=s_train``) as the authors' code draws
them; ``units=active`` keeps only M1's active units, as their code does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vae_lightning import rundir
from vae_lightning import samplers as fitted
from vae_lightning.args import PositiveInt, checked, fail
from vae_lightning.checkpoint_data import STAGES, checked_data
from vae_lightning.checkpoints import refused_if_unwritable
from vae_lightning.errors import ConfigError
from vae_lightning.files import atomic_write, kind, writable_directory
from vae_lightning.log_likelihood import ACTIVE, active_units
from vae_lightning.module import VAE
from vae_lightning.rebuild import device_of, load_model
from vae_lightning.sample import posterior_statistics

log = logging.getLogger(__name__)

LOCATIONS = "locations.npz"  # in the checkpoint's run directory, unless ``out``
RECORD = ("checkpoint_sha256", "locations", "splits")  # keys of the .json that say it is ours
WHAT = {"x": "location of q(z|x) (Encoder.location: a Gaussian posterior's mean), float32 "
             "[N, latent], one row per data point of the split",
        "y": "the split's labels (int64 [N]), or its condition vectors (float32 [N, D])",
        "s": "standard deviation of q(z|x) per dimension, float32 [N, latent] (absent where "
             "the posterior family has none in closed form)",
        "i": "the split's rows in the data it was read from (data=array: the file's array, or "
             "the test array of data.test_key; data=folder: the image files as sorted), int64 "
             "[N] (absent for a published data set)"}


class Encoding:
    """The locations of q(z|x) of the data of ``splits`` (any of ``train``, ``val``, ``test``,
    each once) under the checkpoint ``ckpt_path``'s model, with their labels, written to the
    ``.npz`` file ``out`` (null: ``<run dir>/locations.npz``) and described in the ``.json``
    beside it (the checkpoint and its SHA-256, the splits' sizes, the latent size).

    The data are read ``batch_size`` points at a time from ``data_root`` / ``data_path``, or
    where the run's record says, as ``vae-eval`` reads its split, and checked against the
    checkpoint's record of them unless ``allow_other_data`` (``checkpoint_data``), every split
    before any is encoded. ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ...;
    ``trusted``: see ``rebuild.build_trusted``. ``units``: ``all`` the latent units, or
    ``active`` only those active on the training split (the variance over its points of E_q[z]
    above ``log_likelihood.ACTIVE``, Burda et al.'s criterion, as vae-eval counts its active
    units: ``log_likelihood.active_units``; Kingma et al.'s M1+M2 code keeps M1's units by it), in
    every split."""

    @checked
    def __init__(self, ckpt_path: str, splits: Sequence[str] = tuple(STAGES),
                 out: str | None = None, batch_size: PositiveInt = 500, device: str = "auto",
                 trusted: Sequence[str] = (), data_root: str | None = None,
                 data_path: str | None = None, allow_other_data: bool = False,
                 units: Literal["all", "active"] = "all") -> None:
        if units == "active" and "train" not in splits:
            fail(self, "units", units, "all, or active with the train split among splits (the "
                 "active units are those of the training points)")
        if not splits or len(set(splits)) != len(splits) or not set(splits) <= set(STAGES):
            fail(self, "splits", list(splits), "a list of distinct splits, each one of "
                 + ", ".join(STAGES))
        if out is not None and Path(out).suffix != ".npz":
            fail(self, "out", out, f"a file name ending in .npz, or null (<run dir>/{LOCATIONS})")
        self.ckpt_path, self.splits = ckpt_path, list(splits)
        self.out = Path(out) if out is not None else rundir.of_checkpoint(ckpt_path) / LOCATIONS
        self.out_given, self.batch_size = out is not None, batch_size
        self.device = device_of("encode", device)
        self.trusted, self.data_root, self.data_path = tuple(trusted), data_root, data_path
        self.allow_other_data, self.units = allow_other_data, units

    @property
    def record_path(self) -> Path:
        """The JSON describing the arrays: ``out`` with the suffix ``.json``."""
        return self.out.with_suffix(".json")

    def __call__(self) -> dict[str, Any]:
        """Encode the splits and write the ``.npz`` and its ``.json``; return the ``.json``'s
        content, with its path (``record``) and the arrays' shapes (``arrays``)."""
        self._check_out()
        (model, config, checkpoint), sha256 = fitted.digested(  # of the file loaded
            self.ckpt_path, lambda: load_model(self.ckpt_path, VAE, self.device, self.trusted))
        read = {split: checked_data(config, checkpoint, self.ckpt_path, split, "",
                                    trusted=self.trusted, data_root=self.data_root,
                                    data_path=self.data_path,
                                    allow_other_data=self.allow_other_data,
                                    batch_size=self.batch_size)
                for split in self.splits}
        arrays: dict[str, np.ndarray] = {}
        means = None
        for split, (datamodule, _, _) in read.items():
            locations, stddevs, expected = posterior_statistics(
                model, datamodule.evaluation_batches(split, self.batch_size),
                means=split == "train" and self.units == "active")
            means = expected if expected is not None else means
            arrays[f"x_{split}"] = locations.numpy()
            arrays[f"y_{split}"] = datamodule.evaluation_labels(split).numpy()
            if stddevs is not None:
                arrays[f"s_{split}"] = stddevs.numpy()
            if (rows := datamodule.evaluation_rows(split)) is not None:
                arrays[f"i_{split}"] = np.asarray(rows, np.int64)
        if any(name.startswith("s_") for name in arrays):  # an empty split's too: [0, latent]
            for split in self.splits:
                if not len(arrays[f"x_{split}"]):
                    arrays[f"s_{split}"] = np.zeros((0, model.latent), np.float32)
        kept = list(range(model.latent))
        if self.units == "active":
            # vae-eval's rule (of E_q[z], not of the locations exported: a vMF's direction).
            active = active_units(means)
            if active is None:
                raise ConfigError(f"units=active: the training split has {len(means)} point: a "
                                  "unit's variance over the points, which says whether it is "
                                  "active, needs at least two; use units=all.")
            active = active.numpy()
            if not active.any():
                raise ConfigError(f"units=active: no latent unit of {self.ckpt_path} is active "
                                  "on the training split (every unit's variance of E_q[z] over "
                                  f"the points is at most {ACTIVE}); use units=all.")
            kept = np.flatnonzero(active).tolist()
            arrays = {name: array[:, active] if name[0] in "xs" else array
                      for name, array in arrays.items()}
        _save_npz(self.out, arrays)
        source = next(iter(read.values()))[1]
        record = {
            "checkpoint": str(Path(self.ckpt_path).resolve()),
            "checkpoint_sha256": sha256,
            "locations": str(self.out.resolve()),
            **{key: WHAT[key] for key in ("x", "y", "s")},
            **({"i": WHAT["i"]} if any(name.startswith("i_") for name in arrays) else {}),
            "latent": model.latent,
            "units": kept,
            "splits": {split: {"size": len(arrays[f"x_{split}"]),
                               "data_matches_checkpoint": matches}
                       for split, (_, _, matches) in read.items()},
            "data": {key: value for key, value in source.items() if key.startswith("data.")},
        }
        earlier = self._earlier_output()
        if earlier and earlier.get("checkpoint_sha256") != record["checkpoint_sha256"]:
            log.warning("%s held the locations of another checkpoint (%s, SHA-256 %.12s...): "
                        "replaced by those of %s. Give each checkpoint its own out to keep both.",
                        self.out, earlier.get("checkpoint"), earlier.get("checkpoint_sha256"),
                        record["checkpoint"])
        rundir.write_json(self.record_path, record)
        return {**record, "record": str(self.record_path.resolve()),
                "arrays": {name: list(array.shape) for name, array in arrays.items()}}

    def _check_out(self) -> None:
        """Refuse, before the model is loaded, an ``out`` that cannot be written: in a folder
        that is missing, read-only or a file, or that names a directory."""
        writable_directory(self.out.parent, "out")
        if self.out_given and not self.out.parent.is_dir():
            raise ConfigError(f"out={self.out}: the folder {self.out.parent} does not exist; "
                              f"create it, or choose out in an existing folder (null: "
                              f"<run dir>/{LOCATIONS}).")
        for path in (self.out, self.record_path):
            if kind(path) not in (None, "missing"):
                raise ConfigError(f"out={self.out}: {path} is {kind(path)}, not a file; choose "
                                  "another out.")
        # Only an earlier vae-encode's output is replaced: out=<run>/results.npz replaced the
        # run's results.json by the record, and out=<the data's .npz> the data themselves.
        found = [path for path in (self.out, self.record_path) if kind(path) is None]
        if found and not self._earlier_output():
            raise ConfigError(f"out={self.out}: {found[0]} exists and is not the output of an "
                              f"earlier vae-encode (no record of one, {self.record_path.name}, "
                              "beside it): it would be replaced. Choose another out (null: "
                              f"<run dir>/{LOCATIONS}), or move the file away.")

    def _earlier_output(self) -> dict[str, Any] | None:
        """The record a vae-encode wrote at ``record_path`` (a JSON object with the keys of
        ``RECORD``), else None."""
        try:
            record = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and set(RECORD) <= set(record) else None


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` as an uncompressed ``.npz`` at ``path``, atomically (``files.atomic_write``,
    with the umask's permissions, as the file itself would have), so a reader sees the old file
    or the whole new one; a failed write (a full disk) leaves nothing under the name and is an
    ``UnwritableError``."""
    with refused_if_unwritable(path), atomic_write(path) as file:
        np.savez(file, **arrays)


if __name__ == "__main__":
    from vae_lightning.cli import encode

    encode()
