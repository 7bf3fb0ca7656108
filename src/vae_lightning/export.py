"""vae-export: a trained model as a file to share, without the state that only training needs.

``vae-export RUN_OR_CKPT OUT.ckpt`` writes what loading, evaluating, sampling and encoding read
from a checkpoint (the weights, the run's config, what the data were, the counters) and leaves
out what only a resumed training reads: the optimizer's moments (Adam keeps two tensors per
weight, so they are twice the weights), the loops' progress, the learning-rate schedulers, the
data module's generator state and the callbacks' states (which also hold the paths of the
run's folders on the machine that trained it). The file is about a third of a ``last.ckpt``
and is read by ``vae-eval``, ``vae-sample``, ``vae-encode`` and ``VAE.load_from_checkpoint``
as the checkpoint it came from; the same seed gives the same numbers.

The file is checked twice: the source is read as untrusted input (``read_checkpoint``: an
archive, finite weights, counters) and the model rebuilt from it with the classes this package
ships only (``rebuild.load_model``), so a file that would not load is not exported; the file
written is read back and compared with the source, weight for weight. It records what it came
from (``EXPORT_KEY``: the source's SHA-256 and counters), and ``vae-train ckpt_path=`` refuses it
with that reason: it holds no optimizer state to resume from.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vae_lightning import rundir
from vae_lightning.checkpoints import (
    CONFIG_KEY,
    DATA_KEY,
    EXPORT_KEY,
    read_checkpoint,
    refused_if_unwritable,
)
from vae_lightning.errors import CheckpointError, UserError
from vae_lightning.files import atomic_write
from vae_lightning.samplers import digested

# What an exported file holds: the weights, the run's config and data record (to rebuild the
# model and check the data it is evaluated on), the counters (samples seen: eval.json's
# train_samples_seen; epoch and step: the file's age) and Lightning's version key.
KEPT = ("state_dict", CONFIG_KEY, DATA_KEY, "epoch", "global_step", "samples_seen",
        "train_seconds", "pytorch-lightning_version")


def source_of(path: str | Path) -> Path:
    """The checkpoint ``path`` names: the file itself, or a run directory's
    ``checkpoints/last.ckpt`` (the model at the end of its training)."""
    path = Path(path)
    if path.is_dir():
        last = path / rundir.CHECKPOINTS / rundir.LAST
        if not last.is_file():
            raise CheckpointError(
                f"{path} is a directory without {rundir.CHECKPOINTS}/{rundir.LAST}: name a run "
                "directory (vae-train's hydra.run.dir) or a .ckpt file, e.g. "
                f"<run>/{rundir.CHECKPOINTS}/best-epochN.ckpt for the best validation bound.")
        return last
    return path


def export(source: str | Path, destination: str | Path, *, force: bool = False,
           trusted: Sequence[str] = ()) -> dict[str, Any]:
    """Write the model of ``source`` (a checkpoint, or a run directory's last one) to
    ``destination`` without the training state (module docstring); return what was written:
    the paths, the sizes in bytes, and the record ``EXPORT_KEY``. ``trusted``: dotted names of
    one's own classes the model may build (``rebuild.build_trusted``), as vae-eval's."""
    from vae_lightning.module import VAE
    from vae_lightning.rebuild import load_model

    source = source_of(source)
    destination = Path(destination)
    if destination.suffix != ".ckpt":
        raise CheckpointError(f"OUT={str(destination)!r}: name the exported file with the suffix "
                              ".ckpt, as the commands that read it expect.")
    if destination.exists() and destination.resolve() == source.resolve():
        raise CheckpointError(f"OUT={str(destination)!r} is the checkpoint being exported: write "
                              "the export to another file, the run keeps its own.")
    if destination.is_dir():  # --force renamed over it: an IsADirectoryError traceback
        raise CheckpointError(f"OUT={str(destination)!r} is a directory: name a file to write "
                              "(e.g. OUT/model.ckpt); a directory is never replaced.")
    if destination.is_file() and _holds_training_state(destination):
        # --force wrote an export over the run's last.ckpt (or a best-*.ckpt, or a hard link to
        # one): the optimizer's moments and loops a resume reads were gone.
        raise CheckpointError(f"OUT={str(destination)!r} is a training checkpoint (it holds "
                              "optimizer states, what a resume reads): vae-export never "
                              "replaces one, --force or not. Write the export to another file.")
    if destination.exists() and not force:
        raise CheckpointError(f"OUT={str(destination)!r} exists; it is not overwritten (pass "
                              "--force to replace it).")
    if not destination.parent.is_dir():
        what = "is not a folder" if destination.parent.exists() else "does not exist"
        raise CheckpointError(f"OUT={str(destination)!r}: its folder {destination.parent} "
                              f"{what}.")
    # Read as untrusted input and rebuilt with this package's classes only: a file that would
    # not load (others' classes, sizes, shapes, non-finite weights) is not exported; its
    # digest taken before and after (a last.ckpt a running training writes again is refused).
    (_, _, checkpoint), sha256 = digested(source, lambda: load_model(source, VAE,
                                                                  trusted=tuple(trusted)))
    record = {"sha256": sha256, "epoch": checkpoint.get("epoch"),
              "global_step": checkpoint.get("global_step"),
              "samples_seen": checkpoint.get("samples_seen")}
    kept = {key: checkpoint[key] for key in KEPT if key in checkpoint}
    kept[EXPORT_KEY] = record
    with refused_if_unwritable(destination), atomic_write(destination) as file:
        torch.save(kept, file)
    _check_written(destination, checkpoint["state_dict"])
    return {"source": str(source), "destination": str(destination),
            "source_bytes": source.stat().st_size, "bytes": destination.stat().st_size,
            EXPORT_KEY: record}


def _holds_training_state(path: Path) -> bool:
    """Whether the file ``path`` is a checkpoint that holds a training state (its pickle names
    ``optimizer_states``), read without unpickling anything; False for any other file."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
            return any(b"optimizer_states" in archive.read(name) for name in pickles)
    except (OSError, zipfile.BadZipFile, ValueError, RuntimeError, EOFError):
        return False


def _check_written(destination: Path, weights: dict[str, torch.Tensor]) -> None:
    """Read the file written back and compare its weights with the source's, bit for bit."""
    written = read_checkpoint(destination)["state_dict"]
    differ = [name for name, tensor in weights.items()
              if name not in written or not torch.equal(written[name], tensor)]
    differ += sorted(set(written) - set(weights))
    if differ:
        destination.unlink(missing_ok=True)
        raise CheckpointError(f"The file written to {destination} does not read back as the "
                              f"source's weights ({differ[0]} differs); it was removed.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vae-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="RUN_OR_CKPT",
                        help="a checkpoint, or a run directory (its checkpoints/last.ckpt)")
    parser.add_argument("destination", metavar="OUT.ckpt", help="the file to write")
    parser.add_argument("--force", action="store_true", help="replace OUT.ckpt if it exists")
    parser.add_argument("--trusted", action="append", default=[], metavar="NAME",
                        help="the dotted name of a class of your own the model builds (once "
                             "per class; only for a checkpoint you trained)")
    args = parser.parse_args(argv)
    try:
        done = export(args.source, args.destination, force=args.force, trusted=args.trusted)
    except UserError as err:
        print(f"{err.prefix}: {err}", file=sys.stderr)
        return err.exit_code
    record = done[EXPORT_KEY]
    print(f"{done['destination']}: the model of {done['source']} (epoch {record['epoch']}, "
          f"{record['samples_seen']} samples seen) in {done['bytes'] / 1e6:.2f} MB, "
          f"{done['source_bytes'] / 1e6:.2f} MB with its training state; it is evaluated, "
          "sampled, encoded and loaded as the source is, not resumed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
