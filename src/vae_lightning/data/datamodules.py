"""The base of every data module (``VAEDataModule``): splits read once and kept as tensors,
batches drawn by index (optionally on the GPU), binarization, the scale of pixels, and each
split's identity recorded in checkpoints. The data sets are subclasses in modules of their own
(``mnist``, ``frey``, ``cifar``, ...); how held-out splits are carved is in ``splits``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from vae_lightning.args import NonNegativeInt, PositiveInt, Range, checked, fail
from vae_lightning.errors import CheckpointError, ConfigError

from .labelled import SemiSupervised, balanced_subset
from .sampling import OrderedBatchSampler, ShardedBatchSampler, TensorBatchDataset, derive_seed
from .splits import SPLIT_SEED, digest

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
CHUNK = 4096  # rows of a split scanned at a time by binary_pixels
_STAGE_SPLITS = {
    # Fitting reads the test split too: a corrupt test file is found before the first step, not
    # after training (the test split is small, and Fig. 2's curve evaluates it during training).
    "fit": ("train", "val", "test"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
    None: ("train", "val", "test"),
}


def default_root() -> str:
    """Where the data files are when no root is given: ``$VAE_DATA_DIR``, else ``./data`` (the
    config's ``data.root`` reads the same, ``${oc.env:VAE_DATA_DIR,data}``), so a data module
    made in Python finds what ``train.py`` finds."""
    return os.environ.get("VAE_DATA_DIR", "data")


class VAEDataModule(L.LightningDataModule):
    """Base class: in-memory splits, one tensor per split, served by index slicing, sharded per
    rank.

    ``shape`` is the shape of one image, ``(C, H, W)``: what the networks are built for. A data
    set of fixed images sets it on the class; one whose shape comes from its options or its
    files (a folder, an array file) sets it on the instance in ``__init__``, before any data is
    read, because the model is built for it before training loads anything.
    Dataloader batches are ``(x, y)``: ``x`` uint8 images ``[B, H, W]`` (C = 1) or
    ``[B, C, H, W]``, float images in [0, 1] (an array file given as floats: kept as they are, as
    float32), or bool images when binarized once in setup (``binarize="static"``, and val/test
    with ``"dynamic"``, so the evaluation bound is comparable across epochs and runs); ``y``
    int64 labels ``[B]`` (-1 when the set has none), or float32 condition vectors ``[B, D]``
    where ``_load`` gives them (``data.condition``).
    ``labelled`` (semi-supervised training, ``data.labelled``): each training minibatch is the
    ``batch_size`` images with their labels hidden (-1) followed by ``labelled_batch`` of the
    ``labelled`` images that keep theirs (``labelled.SemiSupervised``).
    ``to_inputs`` turns a batch into model inputs, float32 ``[B, C, H, W]`` in [0, 1]: uint8
    pixels divided by ``scale`` (float pixels are already probabilities: not divided) and, for
    ``binarize="dynamic"``, a fresh Bernoulli draw (u < x) for every training batch from a
    generator seeded by (seed, rank). Lightning calls it through
    ``on_after_batch_transfer`` (on the device); code that iterates the dataloaders without a
    Trainer calls it on each batch itself.

    With ``steps_per_batch`` K > 1, a training batch is a list of K such ``(x, y)`` minibatches
    (fewer at the end of an epoch), for a model that takes one optimizer step per minibatch
    (``VAE(steps_per_batch=K)``, which train.py passes on); the minibatches, their order and
    their binarization draws are those of K = 1.

    Training order is a fresh permutation per epoch from (seed, epoch); val/test are in
    order. With a Trainer attached, each rank serves its own shard (``ShardedBatchSampler``),
    so trainers must set ``use_distributed_sampler=False``.
    """

    name: str
    shape: tuple[int, int, int]
    images = True  # the points are images (pictures of them: samples, reconstructions)

    @checked
    def __init__(
        self,
        root: str | os.PathLike | None = None,
        batch_size: PositiveInt = 100,
        eval_batch_size: PositiveInt | None = None,
        seed: NonNegativeInt = 0,
        num_workers: NonNegativeInt = 0,
        on_device: bool = False,
        download: bool = True,
        scale: Annotated[float, Range(ge=255)] = 255.0,
        val_size: NonNegativeInt = 10000,
        binarize: Literal["none", "static", "dynamic"] = "none",
        steps_per_batch: PositiveInt = 1,
        labelled: PositiveInt | None = None,
        labelled_batch: PositiveInt = 10,
    ) -> None:
        super().__init__()
        self.root = Path(default_root() if root is None else root)
        if self.root.exists() and not self.root.is_dir():
            fail(self, "root", str(root), "expected a directory (it holds the data files), and "
                 "this path is a file: set data.root or VAE_DATA_DIR to a directory")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.seed, self.num_workers, self.on_device = seed, num_workers, on_device
        self.download, self.scale = download, float(scale)
        self.val_size, self.binarize = val_size, binarize
        self.steps_per_batch = steps_per_batch
        self.labelled, self.labelled_batch = labelled, labelled_batch
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # Each split's rows in what it was read from, in its order, where ``_load`` says
        # (data of one's own: ``evaluation_rows``).
        self.rows: dict[str, np.ndarray] = {}
        self._binary: tuple[tuple, bool] | None = None  # binary_pixels' answer, for its splits
        self.digests: dict[str, str] = {}  # split -> SHA-256 of its images and labels as read
        self._labelled_points: str | None = None  # SHA-256 of the labelled training points
        self._generators: dict[str, torch.Generator] = {}
        # Restored states of generators for devices this machine has not (kept to be saved again)
        self._elsewhere: dict[str, torch.Tensor] = {}
        # The binarization generator's state before each minibatch of the last training batch
        # of steps_per_batch K > 1: where the run stopped part-way through it (the model's
        # ``group_left``), the checkpoint saves the state before its first untrained minibatch.
        self._group_states: list[tuple[str, torch.Tensor]] = []

    def _load(self, names: set[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Return ``{split: (images, int64 labels [N])}`` for ``names``: images uint8
        ``[N, H, W]`` or ``[N, C, H, W]``, or float32 ``[N, C, H, W]`` in [0, 1] (the labels may
        be float32 condition vectors ``[N, D]`` instead)."""
        raise NotImplementedError

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _device(self) -> torch.device:
        return torch.device("cpu") if self.trainer is None else self.trainer.strategy.root_device

    def setup(self, stage: str | None = None) -> None:
        names = {s for s in _STAGE_SPLITS[stage] if s not in self.splits}
        for split, (images, labels) in (self._load(names) if names else {}).items():
            self.digests[split] = digest(images, labels)
            x, y = torch.from_numpy(images), torch.from_numpy(labels)
            y = y if y.is_floating_point() else y.long()  # float: condition vectors [N, D]
            if self.binarize == "static" or (self.binarize == "dynamic" and split != "train"):
                # One fixed draw, stored as bool: static everywhere; with dynamic, val and test
                # keep one fixed draw so their bound is comparable across epochs and runs.
                # Val/test draws use the fixed SPLIT_SEED: every run is scored on the same data.
                seed = self.seed if split == "train" else SPLIT_SEED
                gen = torch.Generator().manual_seed(derive_seed(seed, _SPLIT_IDS[split]))
                x = torch.bernoulli(self._probabilities(x), generator=gen).bool()
            self.splits[split] = (x, y)
            if split == "train" and self.labelled and not y.is_floating_point() \
                    and bool((y >= 0).any()):  # refused when read, not after the sanity check
                self._semi_supervised(x, y)  # (no labels at all: the objective's check says so)
        device = self._device()
        if self.on_device and device.type != "cpu":  # also splits loaded before a trainer was
            self.splits = {split: (x.to(device), y.to(device))  # attached (train.py checks them)
                           for split, (x, y) in self.splits.items()}

    def identity(self) -> dict[str, Any]:
        """What the data are, as checkpoints record it and evaluation and resume check it: the
        data set, the image shape, the pixels' scale and binarization, and per loaded split its
        size and the SHA-256 of its images and labels as read (before binarization), the same
        wherever the files lie; with ``labelled``, their number and (once the training split is
        read) the SHA-256 of the points chosen to keep their labels."""
        return {
            "data": self.name,
            "module": f"{type(self).__module__}.{type(self).__qualname__}",
            "shape": list(self.shape),
            "images": self.images,
            "scale": self.scale,
            "binarize": self.binarize,
            "splits": {split: {"size": len(self.splits[split][0]), "sha256": self.digests[split]}
                       for split in sorted(self.digests) if split in self.splits},
            **({"labelled": self.labelled} if self.labelled else {}),
            # Which points keep their labels (chosen by the seed): another seed on resume would
            # show the run other labels.
            **({"labelled_points": self._labelled_points} if self._labelled_points else {}),
        }

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.splits:
            raise RuntimeError(f"The {split} split is not loaded: call setup() first.")
        x, y = self.splits[split]
        rank, world = self._rank_world()
        training = shuffle
        batch_size = self.batch_size if training else self.eval_batch_size
        trainer = self.trainer
        if trainer is not None and trainer.overfit_batches:  # the same first batches each epoch
            shuffle = False
        sampler = (ShardedBatchSampler if shuffle else OrderedBatchSampler)(
            len(x), batch_size, shuffle, self.seed, rank, world,
            current_epoch=(lambda: trainer.current_epoch) if trainer is not None else None,
            group=self.steps_per_batch if training else 1, device=x.device,
            done=(lambda: trainer.fit_loop.epoch_loop.batch_progress.current.completed)
            if trainer is not None and shuffle else None,
            left=(lambda: getattr(getattr(trainer, "lightning_module", None), "group_left", 0))
            if trainer is not None and shuffle and training else None,
        )
        on_cpu = x.device.type == "cpu"
        workers = self.num_workers if on_cpu else 0
        points = self.training_points(x) if training else x
        return DataLoader(
            self._semi_supervised(points, y) if training and self.labelled
            else TensorBatchDataset(points, y),
            sampler=sampler,
            batch_size=None,
            num_workers=workers,
            pin_memory=on_cpu and self._device().type == "cuda",
            persistent_workers=workers > 0,
            # Its own generator: creating an iterator must not draw from the global RNG, or the
            # noise eps of a resumed run would be shifted against an uninterrupted one.
            generator=torch.Generator().manual_seed(derive_seed(self.seed, rank)),
        )

    def training_points(self, x: torch.Tensor) -> Any:
        """The training split's points ``x`` as the training minibatches take them (by
        ``index_select`` and ``len``): ``x`` itself; a data module may draw them afresh
        (``ArrayDataModule.std_key``)."""
        return x

    def _semi_supervised(self, x: torch.Tensor, y: torch.Tensor) -> SemiSupervised:
        """The training split with all but ``labelled`` labels hidden (``data.labelled``)."""
        try:
            chosen = balanced_subset(y.cpu(), self.labelled, self.seed)
        except ValueError as err:
            raise ConfigError(f"data.labelled={self.labelled}: {err}.") from None
        self._labelled_points = digest(chosen.numpy(), np.zeros(0, np.int64))
        return SemiSupervised(x, y, chosen, self.labelled_batch, self.seed)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def evaluation_batches(self, split: str, batch_size: int, device: torch.device | str = "cpu",
                           limit: int | None = None, points: torch.Tensor | None = None
                           ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The ``split`` (its first ``limit`` points, or the points of index ``points``) as
        model inputs and labels, ``batch_size`` points at a time on ``device``: float32
        ``[B, C, H, W]`` and ``evaluation_labels``' ``[B]`` (or ``[B, D]``). What the bound is
        evaluated on, batch by batch, so that no float copy of a large split (dSprites' 737,280
        images: 12 GB) is ever made. With ``binarize="dynamic"`` the training split is
        binarized by one fixed draw (seeded like val/test) from a CPU generator, drawn batch
        after batch: the same pixels whatever the batch size or device, so its bound is
        comparable across evaluations."""
        if split not in self.splits:
            raise RuntimeError(f"The {split} split is not loaded: call setup() first.")
        x, y = self.splits[split]
        labels = self.evaluation_labels(split)
        if points is not None:
            x, labels = x[points.to(x.device)], labels[points]
        n = len(x) if limit is None else min(limit, len(x))
        dynamic = self.binarize == "dynamic" and x.dtype != torch.bool
        if dynamic:
            gen = torch.Generator().manual_seed(derive_seed(SPLIT_SEED, _SPLIT_IDS[split]))
        for start in range(0, n, batch_size):
            xs = x[start:min(start + batch_size, n)].cpu()
            if dynamic:
                xs = torch.rand(xs.shape, generator=gen) < self._probabilities(xs)
            inputs = self.to_inputs((xs.to(device), None))[0]
            yield inputs, labels[start:start + len(inputs)].to(device)

    def evaluation_data(self, split: str, device: torch.device | str = "cpu",
                        limit: int | None = None) -> torch.Tensor:
        """The ``split`` (its first ``limit`` points) as model inputs, float32 ``[N, C, H, W]``
        on ``device``, in one tensor (``evaluation_batches``' batches: a sample of a split, or a
        small one; iterate those batches for a whole large split)."""
        batches = [xs for xs, _ in self.evaluation_batches(split, 4096, device, limit)]
        return torch.cat(batches) if batches else torch.empty(0, *self.shape, device=device)

    def evaluation_rows(self, split: str) -> np.ndarray | None:
        """The rows of ``evaluation_data(split)``, in order, in what the split was read from
        (``data=array``: the file's array, or the test array of ``data.test_key``;
        ``data=folder``: the image files, sorted as ``folder.scan`` lists them); None where the
        data module does not say (a published data set's own order)."""
        return self.rows.get(split)

    def evaluation_labels(self, split: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """The labels of ``evaluation_data(split)``, int64 ``[N]`` (the class of each image;
        zeros for data without labels), or its condition vectors, float32 ``[N, D]``
        (``data.condition``): what a conditional model is given."""
        if split not in self.splits:
            raise RuntimeError(f"The {split} split is not loaded: call setup() first.")
        y = self.splits[split][1]
        return y.to(device) if y.is_floating_point() else y.to(device, torch.int64)

    def mean_image(self, split: str = "train") -> torch.Tensor:
        """The mean model input of ``split``, float32 ``[C, H, W]``: the mean of the pixels'
        values in [0, 1] (for dynamic binarization, the probability of a 1)."""
        if split not in self.splits:
            raise RuntimeError(f"The {split} split is not loaded: call setup() first.")
        x = self.splits[split][0]
        # Summed in chunks: sum(dtype=float64) makes a float64 copy of its input, 8 bytes a pixel.
        mean = sum(chunk.sum(0, dtype=torch.float64) for chunk in x.split(4096)) / len(x)
        if not (x.is_floating_point() or x.dtype == torch.bool):
            mean = mean / self.scale
        return mean.float().reshape(self.shape)

    def binary_pixels(self) -> bool:
        """Whether every pixel the loaded splits hold is 0 or 1 once scaled (``_probabilities``):
        images that are binary already (a uint8 array of 0 and 255 with ``binarize="none"``), on
        which a Bernoulli likelihood is a probability and its bits per dimension a code length,
        as on binarized data. False before any split is loaded; computed once per set of splits,
        ``CHUNK`` rows at a time, stopping at the first pixel of another value."""
        key = tuple((name, len(x)) for name, (x, _) in self.splits.items())
        if not key:
            return False
        if self._binary is None or self._binary[0] != key:
            binary = all(bool(((p == 0) | (p == 1)).all()) for x, _ in self.splits.values()
                         for p in map(self._probabilities, x.flatten(1).split(CHUNK)))
            self._binary = (key, binary)
        return self._binary[1]

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels as float32 in [0, 1]: integer pixels divided by ``scale``; float pixels (an
        array given in [0, 1]) as they are."""
        return x.float() if x.is_floating_point() else x.float() / self.scale

    def _generator(self, device: torch.device) -> torch.Generator:
        if str(device) not in self._generators:
            seed = derive_seed(self.seed, self._rank_world()[0])
            self._generators[str(device)] = torch.Generator(device).manual_seed(seed)
        return self._generators[str(device)]

    def state_dict(self) -> dict[str, Any]:
        """The binarization generators' states, which Lightning saves in each checkpoint (under
        the class's name) and gives back to ``load_state_dict`` on resume: without them a resumed
        run would draw its binarization noise again from the seed, unlike an uninterrupted one.
        Under DDP, every rank's states (``ranks``, gathered from all of them: Lightning builds
        the checkpoint on every rank, and rank 0 writes it), so that each rank goes on with its
        own stream."""
        states = {**self._elsewhere,
                  **{device: gen.get_state() for device, gen in self._generators.items()}}
        model = getattr(self.trainer, "lightning_module", None) if self.trainer else None
        if (left := getattr(model, "group_left", 0)) and len(self._group_states) >= left:
            device, state = self._group_states[-left]  # the untrained minibatches drawn anew
            states[device] = state
        rank, world = self._rank_world()
        ranks = None
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * world
            torch.distributed.all_gather_object(ranks, {device: state.cpu() for device, state
                                                        in states.items()})
        if not states and not any(ranks or ()):
            return {}
        return {"rank": rank, "binarization": states, **({"ranks": ranks} if ranks else {})}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the binarization generators from a checkpoint's states (``state_dict``):
        each DDP rank its own (``ranks``); from a checkpoint of another number of ranks, or
        written before every rank's were saved, rank 0 those it wrote and any other rank its
        own stream from the seed. A checkpoint written before these were saved has none: the
        generators start from the seed, as they did. The checkpoint is untrusted: a state no
        generator takes is refused (``CheckpointError``)."""
        state = state_dict
        if isinstance(state, dict) and not state:  # Lightning never saves it: nothing to restore
            return
        if not isinstance(state, dict) or set(state) - {"ranks"} != {"rank", "binarization"} \
                or not isinstance(state["rank"], int) or isinstance(state["rank"], bool) \
                or not isinstance(state["binarization"], dict) \
                or not isinstance(state.get("ranks", []), list) \
                or not all(isinstance(states, dict) for states in state.get("ranks", [])):
            self._refuse("is not a mapping of the rank and its generators' states")
        ranks = [self._generators_from(states) for states in state.get("ranks", [])]
        written = self._generators_from(state["binarization"])
        rank, world = self._rank_world()
        if len(ranks) == world:
            self._generators, self._elsewhere = ranks[rank]
        elif state["rank"] == rank:
            # Only rank 0 writes the checkpoint, so these are rank 0's: any other rank keeps its
            # own stream (from its seed), not a copy of rank 0's.
            self._generators, self._elsewhere = written

    def _generators_from(self, states: dict[Any, Any]
                         ) -> tuple[dict[str, torch.Generator], dict[str, torch.Tensor]]:
        """Generators continued from one rank's saved ``states`` (device name to state), and the
        states of devices this process has not (kept, to be saved again); refused unless each
        is a state its device's generator takes."""
        generators, elsewhere = {}, {}
        for device, saved in states.items():
            if not isinstance(saved, torch.Tensor) or saved.dtype != torch.uint8 \
                    or saved.dim() != 1:
                self._refuse(f"for {device!r} is not a generator's state (a 1-D uint8 tensor)")
            try:
                where = torch.device(device) if isinstance(device, str) else None
            except RuntimeError:
                where = None
            if where is None:
                self._refuse(f"names {device!r}, which is not a device")
            try:
                fresh = torch.Generator(where)
            except RuntimeError:
                # No such device here (a GPU run resumed without it): no batch is drawn on it in
                # this process, so its state is never used; it is kept, to be saved again.
                elsewhere[device] = saved.clone()
                continue
            if saved.numel() != fresh.get_state().numel():
                self._refuse(f"for {device} holds {saved.numel()} bytes, not the "
                             f"{fresh.get_state().numel()} of a {where.type} generator's state")
            try:
                fresh.set_state(saved.clone())
            except RuntimeError:  # e.g. an mt19937 state its generator finds invalid
                self._refuse(f"for {device} is not a state its generator takes")
            generators[device] = fresh
        return generators, elsewhere

    def _refuse(self, why: str) -> None:
        from vae_lightning.checkpoints import USE_ANOTHER

        path = getattr(self.trainer, "ckpt_path", None) if self.trainer is not None else None
        raise CheckpointError(
            f"Checkpoint {path or '(the one loaded)'}: its data module's binarization state "
            f"{why}, which vae-train does not write (the file was altered). {USE_ANOTHER}")

    def transfer_batch_to_device(self, batch: Any, device: torch.device,
                                 dataloader_idx: int) -> Any:
        """The batch as it is when its tensors are on ``device`` already (data held there, or
        CPU training): Lightning's move would return each tensor itself, after walking the
        batch's structure at every step."""
        if _on(batch, device):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        return self.to_inputs(batch)

    def to_inputs(self, batch):
        """A batch ``(x, y)`` as model inputs: ``x`` float32 ``[B, C, H, W]`` in [0, 1] (see the
        class docstring); a list of minibatches (``steps_per_batch``) minibatch by minibatch."""
        if not isinstance(batch[0], torch.Tensor):  # the minibatches of one batch (steps_per_batch)
            if self.binarize != "dynamic" or batch[0][0].dtype == torch.bool:
                return [self.to_inputs(minibatch) for minibatch in batch]
            inputs, self._group_states = [], []
            for minibatch in batch:
                device = minibatch[0].device
                self._group_states.append((str(device), self._generator(device).get_state()))
                inputs.append(self.to_inputs(minibatch))
            return inputs
        x, y = batch
        x = x.reshape(len(x), *self.shape)
        if x.dtype == torch.bool:  # binarized once in setup
            return x.float(), y
        if self.binarize != "dynamic":
            return self._probabilities(x), y
        # A Bernoulli(x / scale) draw as u < x: faster than torch.bernoulli on CPU.
        generator = self._generator(x.device)
        if x.dtype == torch.uint8 and self.scale in (255.0, 256.0):
            # u uniform on {0, ..., scale - 1}: P(u < x) = x / scale exactly, with no float copy
            # of the batch (docs/benchmarks.md, data throughput).
            u = torch.randint(int(self.scale), x.shape, generator=generator, device=x.device,
                              dtype=torch.uint8)
            return _below(u, x), y
        x = self._probabilities(x)
        return _below(torch.rand(x.shape, generator=generator, device=x.device), x), y


def _on(batch: Any, device: torch.device) -> bool:
    """Whether ``batch`` is a tensor on ``device``, or lists and tuples of such tensors."""
    if isinstance(batch, torch.Tensor):
        return batch.device == device
    return isinstance(batch, list | tuple) and all(_on(item, device) for item in batch)


def _below(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(u < x) as float32 1s and 0s, written straight into the float tensor (no bool tensor
    converted afterwards)."""
    return torch.lt(u, x, out=torch.empty(x.shape, dtype=torch.float32, device=x.device))
