"""What a run is checked for before its first step, each a refusal in one line (or, for a
likelihood that does not fit the data and for threads on busy cores, a warning): the labels a
conditional model takes, the data a resumed run started with, a run already complete, and
parameters that cannot fit in memory (counted on PyTorch's meta device, which allocates
nothing)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch.distributions import constraints

from vae_lightning import rundir
from vae_lightning.args import choices
from vae_lightning.checkpoints import data_differences
from vae_lightning.conditional import check_condition
from vae_lightning.config import instantiate_node
from vae_lightning.config_checks import target_nodes
from vae_lightning.errors import CheckpointError, ConfigError, NothingToDo
from vae_lightning.likelihoods import binary_pixels, code_length
from vae_lightning.metrics import BITS
from vae_lightning.module import VAE
from vae_lightning.pixel_distributions import Grid
from vae_lightning.rebuild import PARTS, build_on_meta
from vae_lightning.resume import saved_whole_epochs
from vae_lightning.sweeps import available_cores

log = logging.getLogger(__name__)

GRID_CHECKED = 1024  # training images whose float pixels check_grid reads


def check_length(cfg: DictConfig, overrides: list[str]) -> None:
    """A training length in samples (``trainer.max_samples``, often an experiment's) replaces
    ``trainer.max_epochs``: refuse a ``max_epochs`` given on the command line beside it, which
    would be ignored, naming what to give instead."""
    samples = OmegaConf.select(cfg, "trainer.max_samples")
    given = [item for item in overrides
             if item.lstrip("+").split("=", 1)[0] == "trainer.max_epochs"
             and item.split("=", 1)[1] not in ("-1", "null")]
    if samples is not None and given:
        raise ConfigError(
            f"{given[0].lstrip('+')} would be ignored: trainer.max_samples={samples:g} sets the "
            "training length in samples (the experiment's, or given). Give the length as "
            "trainer.max_samples=..., or trainer.max_samples=null to train by epochs.")


def check_labels(model: VAE, datamodule: L.LightningDataModule) -> None:
    """A conditional model (``model.classes`` K) takes labels 0..K-1: refuse data whose labels
    fall outside (or that have none, -1) before the first step; hidden labels
    (``data.labelled``) only for an objective that trains without them."""
    if getattr(datamodule, "labelled", None) and not model.objective.unlabelled:
        raise ConfigError(f"data.labelled={datamodule.labelled} hides the other training "
                          f"labels, and the objective {model.objective!r} does not train on "
                          "points without one; use model=m2, or leave data.labelled out.")
    if model.classes is not None and not model._conditional:
        # Nothing reads y: an unconditional model whose bounds results.json and eval.json
        # would call log p(x|y) (log_likelihood.bound_of), and whose y vae-sample would ignore.
        raise ConfigError(
            f"model.classes={model.classes}, but no part of the model reads a class label "
            "(its encoder, decoder and prior are unconditional): use model=cvae (or "
            "model/encoder=conditional_mlp and model/decoder=conditional_mlp, or "
            "model/prior=class_normal), or leave model.classes null for an unconditional "
            "model.")
    if getattr(datamodule, "condition", None) is not None:  # condition vectors, not labels
        return check_condition(model, datamodule)
    if model.classes is None:
        return
    for split, (_, y) in datamodule.splits.items():
        if len(y) and int(y.max()) < 0:  # "set model.classes" cannot help data without labels
            raise ConfigError(
                f"model.classes={model.classes}: the model is conditional on labels "
                f"0..{model.classes - 1}, and the data's {split} split has no labels: "
                "data=array reads them only with data.labels_key=<its array of labels> (and "
                "data.test_labels_key for a test array), data=folder from class subfolders; or "
                "train an unconditional model (model=vae).")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= model.classes):
            low, high = int(y.min()), int(y.max())
            raise ConfigError(
                f"model.classes={model.classes}: the model is conditional on labels "
                f"0..{model.classes - 1}, and the data's {split} split has labels {low}..{high}; "
                "set model.classes to the number of classes, or train an unconditional model "
                "(model=vae) on data without labels.")
    highest = max((int(y.max()) for _, y in datamodule.splits.values() if len(y)), default=None)
    if highest is not None and highest < model.classes - 1:
        # Two class subfolders under the default model.classes=10: eight classes never seen,
        # drawn all the same by the figures and vae-sample's classes in turn.
        unseen = (f"label {highest + 1} never occurs" if highest + 2 == model.classes
                  else f"labels {highest + 1}..{model.classes - 1} never occur")
        log.warning("model.classes=%d, but the data's labels are 0..%d: %s, and samples of "
                    "them are drawn from what the model never saw; set model.classes=%d.",
                    model.classes, highest, unseen, highest + 1)


def check_minibatches(model: VAE, datamodule: L.LightningDataModule, world: int = 1) -> None:
    """An objective whose loss needs ``min_batch`` points in each training minibatch (the MMD's
    pairs) refuses a ``data.batch_size`` below that, or a training split whose size leaves
    fewer after an epoch's last full minibatch, before the first step (the loss of such a
    minibatch has no value: a NaN at the epoch's end). Under DDP (``world`` processes) each
    rank's share of the split, n // world (``data.sampling.ShardedBatchSampler``), is what
    its minibatches divide."""
    need, size = model.objective.min_batch, getattr(datamodule, "batch_size", None)
    if need <= 1 or size is None or "train" not in getattr(datamodule, "splits", {}):
        return
    n = len(datamodule.splits["train"][0]) // world
    if size >= need and n % size in (0, *range(need, size)):
        return
    share = f"each of the {world} ranks' shares of the training split" if world > 1 else \
        "the training split"
    if n < need:  # no batch size helps ("e.g. data.batch_size=1" was offered)
        raise ConfigError(
            f"{type(model.objective).__name__} (model/objective) needs at least {need} points in "
            f"each training minibatch (its estimate takes pairs of them), but {share} "
            f"holds {n}: add data, or hold fewer out (data.val_size, data.test_size).")
    fits = next((b for b in range(max(size, need), n + 1) if n % b == 0 or n % b >= need), n)
    why = (f"data.batch_size={size} holds fewer" if size < need else
           f"{share}'s {n} points leave {n % size} after the last full minibatch "
           f"of data.batch_size={size}")
    raise ConfigError(
        f"{type(model.objective).__name__} (model/objective) needs at least {need} points in "
        f"each training minibatch (its estimate takes pairs of them), but {why}: choose a "
        f"data.batch_size of at least {need} that leaves none or at least {need} over, e.g. "
        f"data.batch_size={fits}.")


def check_dataset_size(model: VAE, datamodule: L.LightningDataModule) -> None:
    """beta-TC's minibatch-stratified sampling (``estimator=mss``) weights each minibatch by N,
    the number of training points (``model.objective.dataset_size``): refuse, before the first
    step, an N that is not the training split's (an experiment's number kept when data.val_size,
    data.test_size or the data change), which biases every estimate of q(z) without a word."""
    objective = model.objective
    size = getattr(objective, "dataset_size", None)
    if (getattr(objective, "estimator", None) != "mss" or size is None
            or "train" not in getattr(datamodule, "splits", {})):
        return
    n = len(datamodule.splits["train"][0])
    if size != n:
        raise ConfigError(
            f"model.objective.dataset_size={size}, but the training split holds {n} points: "
            "estimator=mss weights each minibatch by N, the number of training points; set "
            f"model.objective.dataset_size={n}.")


def check_grid(model: VAE, datamodule: L.LightningDataModule, split: str = "train") -> None:
    """A likelihood of 8-bit levels (``pixel_distributions.Grid``: the values k / (bins - 1))
    scores a pixel off its grid as the nearest level: on data of another grid (Frey Face's
    k / 256 under bins = 256, or float pixels of any other quantisation) two levels of the data
    share one bin, and the bound is no log-probability of the data. Refuse such data before the
    first step: integer pixels are divided by ``data.scale``, which must be bins - 1; float
    pixels are checked on the first GRID_CHECKED images of ``split`` (the one trained on, or
    evaluated)."""
    support = model.decoder.likelihood.support
    if not isinstance(support, Grid) or split not in getattr(datamodule, "splits", {}):
        return
    x = datamodule.splits[split][0]
    name = f"model/likelihood ({type(model.decoder.likelihood).__name__})"
    if not x.is_floating_point():
        if datamodule.scale == support.bins - 1:
            return
        raise ConfigError(
            f"{name} with model.decoder.likelihood.bins={support.bins} scores the levels "
            f"k / {support.bins - 1}, but data.scale={datamodule.scale:g} makes the pixels "
            f"k / {datamodule.scale:g}: set model.decoder.likelihood.bins="
            f"{int(datamodule.scale) + 1} (or data.scale={support.bins - 1}), so that every "
            "pixel value is one level of the likelihood.")
    first = x[:GRID_CHECKED].float()
    off = ~support.check(first)
    if off.any():
        value = first[off][0].item()
        raise ConfigError(
            f"{name} with model.decoder.likelihood.bins={support.bins} scores the levels "
            f"k / {support.bins - 1}, but the {split} images hold pixel values off that grid "
            f"(e.g. {value:.6g}, in {int(off.sum())} of the first {first.numel()} values): give "
            "the data's number of levels as model.decoder.likelihood.bins, or a likelihood for "
            "continuous pixels (model/likelihood=gaussian, beta or continuous_bernoulli).")


def check_same_data(checkpoint: dict[str, Any], datamodule: L.LightningDataModule,
                     path: str) -> None:
    """A resumed run must train on the data it started with: refuse other data (another
    folder, other files, another split) before the first step."""
    differences = data_differences(checkpoint, datamodule.identity())
    if differences:
        raise CheckpointError(
            f"Checkpoint {path} was trained on other data than this run reads: "
            f"{'; '.join(differences)}. Resume with the data the run was started with "
            "(data.root, data.path and the data options of its first command).")


def refuse_if_complete(cfg: DictConfig, checkpoint: dict[str, Any], path: str) -> None:
    """Resuming a run that already reached this config's length trains nothing: say so, and
    leave the run (its results, checkpoints and record) as it is. Unless its results were not
    recorded (a signal in its final evaluation: results.json says ``interrupted``, or a kill
    left none): then the resume trains nothing and evaluates it."""
    seen = checkpoint.get("samples_seen", 0)
    steps = checkpoint.get("global_step", 0)
    epochs = saved_whole_epochs(checkpoint)
    trainer = cfg.trainer
    if trainer.get("max_samples") is not None:
        done, length = seen >= trainer.max_samples, f"trainer.max_samples={trainer.max_samples:g}"
    elif (trainer.get("max_steps") or -1) >= 0 and steps >= trainer.max_steps:
        done, length = True, f"trainer.max_steps={trainer.max_steps}"
    else:
        max_epochs = trainer.get("max_epochs")
        done = max_epochs not in (None, -1) and epochs >= max_epochs
        length = f"trainer.max_epochs={max_epochs}"
    recorded = rundir.status(rundir.of_checkpoint(path))
    if done and recorded in (None, "interrupted"):
        log.info("The run of %s trained to its length, and its results were not recorded "
                 "(results.json: %s): evaluating it.", path, recorded or "none")
    elif done:
        raise NothingToDo(
            f"The run of {path} is complete ({epochs} epochs, {steps} steps, {seen:,} samples "
            f"seen: {length} reached); nothing was trained or written. To train it further, "
            "resume with a larger trainer.max_epochs, trainer.max_steps or trainer.max_samples.")


def check_memory(cfg: DictConfig, shape: list[int]) -> dict[str, torch.nn.Module]:
    """Refuse a model whose parameters alone (with their gradients and two optimizer moments)
    would not fit in the memory available: counted on PyTorch's meta device, which allocates
    nothing, so an impossible size is an error line, not an allocation failure or a kill.
    Returns the parts built on the meta device (a resumed checkpoint's weights are checked
    against them before anything else is built; a part that cannot be built there, on the CPU:
    ``rebuild.build_on_meta``)."""
    parts = {key: build_on_meta(lambda key=key: instantiate_node(cfg.model[key], f"model.{key}", **(
                 {"data_shape": shape} if "data_shape" in cfg.model[key] else {})))
             for key in PARTS}
    available = available_memory()
    if available is None:
        return parts
    modules = {key: part for key, part in parts.items() if isinstance(part, torch.nn.Module)}
    count = sum(p.numel() for part in modules.values() for p in part.parameters())
    needed = 4 * count * 4  # float32 weights, gradients, two optimizer moments
    if needed > available:
        sizes = ", ".join(f"model.{key} {sum(p.numel() for p in part.parameters()):,}"
                          for key, part in modules.items())
        raise ConfigError(
            f"Invalid configuration: the model has {count:,} parameters ({sizes}), about "
            f"{needed / 2**30:.1f} GiB with their gradients and optimizer state, and "
            f"{available / 2**30:.1f} GiB of memory are available; reduce model.latent or the "
            "networks' sizes.")
    return parts


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux: MemAvailable), if known."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_bits_metric(cfg: Any, model: VAE, datamodule: L.LightningDataModule) -> None:
    """A run optimized (``optimized_metric``) or stopped (an early-stopping callback) on bits per
    dimension, which it logs only where they are a code length (``likelihoods.code_length``):
    refused before training where they are not (a density of continuous pixels, Frey Face's
    Gaussian), which would train in full and then fail on the metric."""
    likelihood = model.decoder.likelihood
    if likelihood.discrete and code_length(likelihood, datamodule):
        return
    if likelihood.support is constraints.boolean and callable(
            getattr(datamodule, "binary_pixels", None)) and not datamodule.splits:
        return  # binary already or not: the pixels decide, once read (train checks again then)
    named = {"optimized_metric": cfg.get("optimized_metric")}
    for path, node in target_nodes(cfg.get("callbacks")):
        if str(node._target_).endswith("EarlyStopping"):
            named[f"callbacks.{path}.monitor"] = node.get("monitor")
    for key, metric in named.items():
        if isinstance(metric, str) and metric.endswith(f"/{BITS}"):
            raise ConfigError(
                f"{key}={metric}: this run logs no bits per dimension, which are a code length "
                f"only for a probability of discrete pixel values (the likelihood "
                f"{type(likelihood).__name__} on these data is not one): choose the same "
                f"split's elbo, e.g. {metric.split('/')[0]}/elbo.")


def warn_about_the_likelihood(datamodule: L.LightningDataModule, model: VAE) -> None:
    """The likelihood must be a distribution of the kind of values the data hold, before the
    data are read: a likelihood for values in [0, 1] (or binary, or a grid) has no density on
    real numbers (``data=array``'s float feature vectors), only a likelihood of counts scores
    counts (its integer feature vectors), and one of counts scores nothing else (grey pixels
    under a likelihood for binary ones: ``warn_about_grey_pixels``)."""
    likelihood = model.decoder.likelihood
    name = type(likelihood).__name__
    real = getattr(datamodule, "real_values", False)
    counts = getattr(datamodule, "counts", False)
    where = f"data.path={str(getattr(datamodule, 'path', ''))!r}"
    if real and likelihood.support is not constraints.real:
        raise ConfigError(
            f"model/likelihood ({name}) is a distribution of {_values(likelihood)}, but {where} "
            "holds float feature vectors, real numbers: expected a likelihood for real numbers "
            "with a mean that is not squashed into (0, 1): model/likelihood=gaussian "
            "model.decoder.likelihood.mean_activation=identity.")
    if real and getattr(likelihood, "mean_activation", None) == "sigmoid":
        raise ConfigError(
            "model.decoder.likelihood.mean_activation=sigmoid keeps the decoder's mean in (0, 1), "
            f"but {where} holds float feature vectors, real numbers: expected "
            "model.decoder.likelihood.mean_activation=identity.")
    if counts and not likelihood.counts:
        raise ConfigError(
            f"model/likelihood ({name}) is a distribution of {_values(likelihood)}, but {where} "
            "holds integer feature vectors, counts: expected a likelihood for counts, "
            "model/likelihood=poisson or negative_binomial (or float feature vectors, e.g. "
            "numpy.log1p(x).astype(numpy.float32), with model/likelihood=gaussian "
            "model.decoder.likelihood.mean_activation=identity).")
    if likelihood.counts and not counts:
        data = ("float feature vectors, real numbers" if real else
                f"{type(datamodule).__name__}'s pixel values in [0, 1]")
        raise ConfigError(
            f"model/likelihood ({name}) is a distribution of counts, non-negative integers, but "
            f"the data are {data}: expected counts as integer feature vectors [N, D] (int32 or "
            "int64) in data=array, or a likelihood for these data.")


def _values(likelihood: Any) -> str:
    """What ``likelihood`` is a distribution of, in words."""
    support = likelihood.support
    return ("binary values" if support is constraints.boolean else
            "values in [0, 1]" if support is constraints.unit_interval else
            "counts" if likelihood.counts else
            "real numbers" if support is constraints.real else "a grid of pixel values")


def warn_about_grey_pixels(datamodule: L.LightningDataModule, model: VAE) -> None:
    """A likelihood for binary pixels on grayscale ones works, but its bound is not a log
    probability: say so, and what fits; not for images whose pixels are binary already (read
    to tell: called once the data are read, before the first step)."""
    likelihood = model.decoder.likelihood
    if likelihood.support is not constraints.boolean or getattr(datamodule, "binarize",
                                                                "none") != "none":
        return
    if binary_pixels(datamodule):  # images binary already: a log probability as they are
        return
    fix = ("data.binarize=dynamic (binary pixels), or a likelihood for [0, 1] data such as "
           "model/likelihood=continuous_bernoulli"
           if "dynamic" in (choices(type(datamodule), "binarize") or ()) else
           "a likelihood for continuous pixels: model/likelihood=gaussian, "
           "continuous_bernoulli or beta")
    log.warning(
        "model/likelihood=%s on grayscale pixels (data.binarize=none): its log-likelihood of "
        "non-binary data is not normalised, so the bound is not a log probability in nats. "
        "Use %s.", type(likelihood).__name__.lower(), fix)


def check_log_input(model: VAE, datamodule: L.LightningDataModule) -> None:
    """An encoder that reads log(1 + x) (``model.encoder.net.log_input``, for counts) has no
    input where a value is -1 or below (real-valued feature vectors): every such point's bound
    was NaN, a run refused at its first step with a word about the data's scale only. Refused
    before the first step, naming the key, the split and the smallest value."""
    if not any(getattr(part, "log_input", False) for part in model.encoder.modules()):
        return
    for split, (x, _) in getattr(datamodule, "splits", {}).items():
        if len(x) and x.is_floating_point() and float(x.min()) <= -1:
            raise ConfigError(
                "model.encoder.net.log_input=true has the encoder read log(1 + x), which is "
                f"not defined where x <= -1, and the data's {split} split holds "
                f"{float(x.min()):.6g}: expected it with counts or other values > -1, or "
                "model.encoder.net.log_input=false.")


def warn_about_busy_cores() -> None:
    """Warn, in one line, when torch will run several threads on cores that other processes
    keep busy: the OpenMP threads of each operation spin while they wait for the slowest of
    them, so a thread that the system has paused for another process stalls the others, and
    training or an evaluation can run an order of magnitude slower (docs/benchmarks.md, "Busy
    cores"). Nothing is changed: on idle cores the spinning is what makes several threads fast."""
    threads = torch.get_num_threads()
    if threads < 2 or "OMP_WAIT_POLICY" in os.environ or not hasattr(os, "getloadavg"):
        return
    cores, load = available_cores(), os.getloadavg()[0]
    if load < cores - threads + 1:  # less than one core's worth of other work
        return
    log.warning(
        "The cores are busy (load average %.1f on %d cores) and torch runs %d threads, whose "
        "OpenMP workers spin while waiting for each other: this run may take many times longer "
        "than on idle cores. Run with OMP_WAIT_POLICY=PASSIVE (or fewer threads, "
        "OMP_NUM_THREADS=1) in the environment, or free the cores.", load, cores, threads)
