"""Evaluation of a trained VAE (``vae-eval`` / ``eval.py``): the model rebuilt from its checkpoint
(``rebuild``), its data found where the user keeps them and checked (``checkpoint_data``), the
ELBO and the importance-weighted estimate of log p(x) on the test (or validation) data
(``log_likelihood``), written to eval.json.

On request, also what the latents and samples are worth: disentanglement metrics against the
ground-truth factors of the data (``metrics``: ``disentanglement``) and sample quality (FID, KID,
precision and recall in a feature space: ``sample_quality``), into the same eval.json.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from vae_lightning import (
    ais,
    disentanglement,
    ground_truth,
    log_likelihood,
    run_checks,
    rundir,
    samplers,
)
from vae_lightning import sample_quality as quality
from vae_lightning.args import (
    ArgumentError,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    checked,
)
from vae_lightning.checkpoint_data import STAGES, checked_data, find_data, read_from
from vae_lightning.errors import ConfigError
from vae_lightning.files import writable_directory
from vae_lightning.likelihoods import code_length
from vae_lightning.log_likelihood import Estimate, evaluate, units
from vae_lightning.module import VAE
from vae_lightning.objectives import auto_chunk
from vae_lightning.rebuild import device_of, load_model
from vae_lightning.reports import json_files
from vae_lightning.reports.json_files import finite, optional, text, whole
from vae_lightning.reports.summarize import READ_EVAL

log = logging.getLogger(__name__)
Metric = Literal["beta_vae", "factor_vae", "mig", "sap", "dci", "modularity"]
Quality = Literal["fid", "kid", "precision_recall"]


# What makes two eval.json files the same evaluation (one replaces the other): the settings
# and the model evaluated (another checkpoint, or the same file after more training, is not).
SAME = ("split", "k", "n", "checkpoint", "train_samples_seen", "data_source")


# eval.json's per-point estimates are rounded to this many decimals of a nat: far below any
# standard error, and half the size of the file that full floats would make.
PER_POINT_DECIMALS = 4


# And the settings of its AIS estimate, where it has one (none: None).
AIS_SETTINGS = ("steps", "chains", "leapfrog", "start")


# And what else it holds besides the bounds (each an hour's work or more): the
# disentanglement metrics, the sample-quality scores and the fitted prior's bound, by what
# they ran (an evaluation without them does not replace one with them).
EXTRAS = {"disentanglement": ("seeds", "options"),
          "sample_quality": ("features", "classifier", "inception_weights", "generated",
                             "real", "samples_are", "seed", "fid", "kid", "precision",
                             "recall"),
          "fitted_prior": ("sampler",)}


def _layers(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(layer, dict) and whole(layer.get("size"), 1)
        and optional(whole)(layer.get("active_units")) and optional(finite)(layer.get("kl"))
        for layer in value)


# What ``eval.bounds=false`` reads of the evaluation it adds to (its bounds, and what else it
# holds, printed again in the closing summary), beyond what vae-summarize reads (READ_EVAL):
# an eval.json is a file anyone may have edited, or an earlier vae-eval written without a key
# (bound_of): refused in one line before the scores are computed, not a traceback after.
_ESTIMATE = {"nats": (optional(finite), "a finite number or null"),
             "nats_se": (optional(finite), "a finite number or null"),
             "bits_per_dim": (optional(finite), "a finite number or null"),
             "bits_per_dim_se": (optional(finite), "a finite number or null")}
EARLIER = {
    **READ_EVAL,
    "bound_of": (text, "what the estimates bound, a string (log p(x), ...)"),
    "n": (partial(whole, least=1), "an integer >= 1"),
    "latent": (partial(whole, least=1), "an integer >= 1"),
    "active_units": (optional(whole), "an integer >= 0 or null"),
    "elbo": (json_files.mapping, "an object with the estimate"),
    **{f"{bound}.{key}": check for bound in ("iw", "elbo") for key, check in _ESTIMATE.items()},
    "fitted_prior": (json_files.mapping, "an object (sampler, elbo)"),
    "fitted_prior.sampler": (text, "the fitted prior's name, a string"),
    "fitted_prior.elbo": (json_files.mapping, "an object with the bound"),
    **{f"fitted_prior.elbo.{key}": check for key, check in _ESTIMATE.items()},
    "kl": (optional(finite), "a finite number or null"),
    "mi": (optional(finite), "a finite number or null"),
    "mi_se": (optional(finite), "a finite number or null"),
    "layers": (_layers, "a list of objects with size, active_units and kl"),
    "classification_error": (json_files.fraction, "a number in [0, 1] (M2's q(y|x))"),
    **{f"ais.{key}": check for key, check in _ESTIMATE.items()},
    "ais.steps": (partial(whole, least=1), "an integer >= 1"),
    "ais.chains": (partial(whole, least=1), "an integer >= 1"),
    "ais.start": (text, "a string (prior, posterior)"),
    "ais.ess_min": (finite, "a finite number"),
    "ais.minus_iw": (json_files.mapping, "an object (nats, nats_se)"),
    "ais.minus_iw.nats": (finite, "a finite number"),
    "ais.minus_iw.nats_se": (optional(finite), "a finite number or null"),
    "sample_quality.generated": (whole, "an integer >= 0"),
    "sample_quality.real": (whole, "an integer >= 0"),
    "sample_quality.features": (text, "a string (classifier, inception)"),
    "sample_quality.kid.std": (optional(finite), "a finite number or null"),
}
# Those it needs, where their parent is there (the bounds always; AIS's, the sample quality's
# and the fitted prior's where the evaluation has them).
EARLIER_REQUIRED = (
    "split", "k", "n", "latent", "active_units", "bound_of", "iw", "elbo",
    *(f"{bound}.{key}" for bound in ("iw", "elbo", "ais", "fitted_prior.elbo")
      for key in _ESTIMATE),
    "fitted_prior.sampler", "fitted_prior.elbo",
    *(f"ais.{key}" for key in ("steps", "chains", "start", "ess_min", "minus_iw")),
    "ais.minus_iw.nats", "ais.minus_iw.nats_se",
    *(f"sample_quality.{key}" for key in ("generated", "real", "features")),
    "sample_quality.kid.mean", "sample_quality.kid.std")


def _same(one: Any, other: dict[str, Any]) -> bool:
    return (isinstance(one, dict) and all(_read(one, key) == _read(other, key) for key in SAME)
            and _ais_settings(one) == _ais_settings(other)
            and _extras(one) == _extras(other))


def _read(results: dict[str, Any], key: str) -> Any:
    """An eval.json's ``key`` as evaluations are compared: its data by where they were read
    from, not by how that place was named (``checkpoint_data.read_from``)."""
    return read_from(results.get(key)) if key == "data_source" else results.get(key)


def _extras(results: dict[str, Any]) -> dict[str, Any]:
    """What ran of ``EXTRAS`` in an evaluation: each one's settings (for the sample-quality
    scores, which of them it has), None for one it does not hold."""
    found: dict[str, Any] = {}
    for name, keys in EXTRAS.items():
        node = results.get(name)
        found[name] = ({key: (node.get(key) if key not in quality.SCORES else key in node)
                        for key in keys}
                       if isinstance(node, dict) else None)
    return found


def _ais_settings(results: dict[str, Any]) -> tuple | None:
    found = results.get("ais")
    return tuple(found.get(key) for key in AIS_SETTINGS) if isinstance(found, dict) else None


def _keep_what_is_replaced(path: Path, results: dict[str, Any]) -> None:
    """An eval.json of another split, k or number of points, or of another checkpoint (or of
    the same one at another number of samples seen, or on other data), is kept beside the new
    one (``rundir.kept_evaluation``): a quick check (eval.k=100) does not cost an hours-long
    k = 5000 estimate, nor an evaluation of best-epochN.ckpt that of last.ckpt. ``eval.json`` is
    the newest evaluation. The earlier file's values name the kept file only where they are
    what vae-eval writes (a split, whole numbers): nothing read from the file chooses another
    path. A kept file of the same evaluation is replaced; another one is not (a number is added
    to the name). An eval.json that cannot be read as an evaluation (not JSON, not an object:
    a file truncated by a full disk, edited by hand) is kept too, as ``eval-earlier.json``: it
    may be the only copy of an hours-long estimate's numbers."""
    if not path.is_file():
        return
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):  # not JSON (or not UTF-8): kept, not replaced
        earlier = None
    readable = isinstance(earlier, dict)
    if not readable:
        earlier = {}
    before = (earlier.get("split"), earlier.get("k"), earlier.get("n"))
    now = (results["split"], results["k"], results["n"])
    if earlier and _same(earlier, results):
        return
    split, k, n = before
    named = isinstance(split, str) and split in STAGES and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (k, n))
    number = 1
    while True:
        kept = rundir.kept_evaluation(path, *(before if named else ()), number=number)
        try:
            if not kept.exists() or (earlier and _same(json.loads(kept.read_text()), earlier)):
                break
        except (OSError, ValueError):
            pass
        number += 1
    path.replace(kept)
    if not readable:
        log.warning("%s could not be read as an evaluation (it is not a JSON object): kept as "
                    "%s; eval.json now holds this one (split=%s, k=%s, %s points).", path,
                    kept.name, *now)
        return
    other = ("" if earlier.get("checkpoint") == results["checkpoint"]
             else f" {earlier.get('checkpoint')},")
    # Where either holds an AIS estimate, what each ran (two evaluations may differ in it only).
    annealed = _ais_settings(earlier) is not None or _ais_settings(results) is not None
    then, later = (_ais_words(earlier), _ais_words(results)) if annealed else ("", "")
    log.warning("%s held the evaluation of%s split=%s, k=%s (%s points%s): kept as %s; eval.json "
                "now holds this one (split=%s, k=%s, %s points%s).", path, other, *before, then,
                kept.name, *now, later)


def _ais_words(results: dict[str, Any]) -> str:
    """An evaluation's AIS settings in words, for the log line of a kept eval.json."""
    settings = _ais_settings(results)
    if settings is None:
        return ", no AIS"
    steps, chains, _, start = settings
    return f", AIS {steps} steps x {chains} chains from the {start}"


class Evaluation:
    """The ``eval`` options: ``k`` importance samples per data point, scored ``chunk`` at a time
    (memory ~ chunk x batch_size x pixels; None: ``objectives.auto_chunk``, sized to the cache on
    a CPU), ``batch_size`` data points per batch, on the ``split``
    (``test`` or ``val``), its first ``limit`` points only when set (a quicker estimate, e.g. on a
    CPU), on ``device`` (``auto``: CUDA when available). ``trusted``: dotted names
    of your own classes a checkpoint may build (see ``rebuild.build_trusted``).

    The data are the user's to name, never the checkpoint's: read from ``data_root`` /
    ``data_path`` (default: the run's own record) and checked against the checkpoint's record of
    them, other data refused unless ``allow_other_data`` (eval.json then says so), as
    ``checkpoint_data`` finds and checks them.

    An evaluation estimated to take more than ``max_hours`` (from a timed pass on the first
    batch) is refused before it starts.

    ``metrics`` (data with ground-truth factors, e.g. dSprites): each disentanglement metric of
    ``disentanglement`` with ``metric_seeds`` seeds (``seed``, ``seed`` + 1, ...) and the options
    of ``metric_options`` (``{metric: {option: value}}``; disentanglement_lib's sample sizes by
    default), on the location of q(z|x).
    ``sample_quality`` (fid, kid, precision_recall): ``samples`` images of the model (E[x|z]
    with ``sample_mean``, else x ~ p(x|z)) against as many of the ``split``'s images (their
    pixel values in [0, 1], before any binarization), in the ``features`` space: the data set's
    feature classifier (``classifier``, default ``<data root>/feature_classifiers/<data>.pt``)
    or Inception-v3 (``inception_weights``); KID over ``kid_subsets`` subsets of
    ``kid_subset_size``, precision and recall with ``nearest_k`` neighbours. ``fitted_prior``
    (``pixelcnn``): a VQ-VAE's bound also with the prior over code maps fitted after training
    (``pixelcnn.fitted_prior``) in place of the uniform one. ``ais_steps`` > 0: also the
    annealed-importance-sampling estimate of log p(x) (``ais``) on the same points, with that
    many annealing steps, ``ais_chains`` chains a point, ``ais_leapfrog`` leapfrog steps a move,
    from ``ais_start`` (``auto``: q(z|x) where it has a density at any z, else the prior).
    Everything these need is checked before the bound is estimated, and the time of the IW
    estimate and of AIS together against ``max_hours``. ``bounds=False``: no bound is
    estimated; they are those of the eval.json already in the output directory, which must be
    of this checkpoint (its path and samples seen), split and data, and the evaluations asked
    besides (``metrics``, ``sample_quality``, ``fitted_prior``; AIS is paired with its own IW
    estimate and refused) are added to it (``_earlier``)."""

    @checked
    def __init__(self, k: PositiveInt = 5000, chunk: PositiveInt | None = None,
                 batch_size: PositiveInt = 100, split: Literal["test", "val"] = "test",
                 device: str = "auto", trusted: Sequence[str] = (),
                 limit: PositiveInt | None = None, data_root: str | None = None,
                 data_path: str | None = None, allow_other_data: bool = False,
                 max_hours: PositiveFloat | None = 24.0, metrics: Sequence[Metric] = (),
                 metric_seeds: PositiveInt = 1,
                 metric_options: Mapping[str, Mapping[str, Any]] | None = None,
                 sample_quality: Sequence[Quality] = (), samples: PositiveInt = 10000,
                 sample_mean: bool = True,
                 features: Literal["classifier", "inception"] = "classifier",
                 classifier: str | None = None, inception_weights: str | None = None,
                 kid_subsets: PositiveInt = 100, kid_subset_size: PositiveInt = 1000,
                 nearest_k: PositiveInt = 3,
                 fitted_prior: Literal["pixelcnn"] | None = None,
                 ais_steps: NonNegativeInt = 0, ais_chains: PositiveInt = 8,
                 ais_leapfrog: PositiveInt = 10,
                 ais_start: Literal["auto", "prior", "posterior"] = "auto",
                 bounds: bool = True) -> None:
        self.k, self.chunk, self.batch_size, self.split = k, chunk, batch_size, split
        self.bounds = bounds
        self.limit, self.max_hours = limit, max_hours
        self.trusted = tuple(trusted)
        self.data_root, self.data_path = data_root, data_path
        self.allow_other_data = allow_other_data
        self.device = device_of("eval", device)
        options = _plain(metric_options or {})
        found = disentanglement.option_problems(options)
        if found:
            raise ArgumentError(f"{type(self).__module__}.{type(self).__qualname__}", found)
        self.metrics, self.metric_seeds = tuple(dict.fromkeys(metrics)), metric_seeds
        self.metric_options = options
        self.sample_quality = tuple(dict.fromkeys(sample_quality))
        self.samples, self.sample_mean, self.features = samples, sample_mean, features
        self.classifier, self.inception_weights = classifier, inception_weights
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.nearest_k, self.fitted_prior = nearest_k, fitted_prior
        self.ais_steps, self.ais_chains, self.ais_leapfrog = ais_steps, ais_chains, ais_leapfrog
        self.ais_start = ais_start

    def __call__(self, ckpt_path: str, seed: int, output_dir: str | None) -> dict[str, Any]:
        """Rebuild the model of ``ckpt_path`` and its data from where the user keeps them,
        estimate, write ``eval.json`` into ``output_dir`` (default: the checkpoint's run
        directory) and return its content. From its first progress file on, the directory's
        evaluation lock is held (``rundir.evaluating``): one vae-eval at a time writes there."""
        with contextlib.ExitStack() as held:
            return self._evaluate(ckpt_path, seed, output_dir, held)

    def _evaluate(self, ckpt_path: str, seed: int, output_dir: str | None,
                  held: contextlib.ExitStack) -> dict[str, Any]:
        from tqdm.auto import tqdm

        out = Path(output_dir) if output_dir else rundir.of_checkpoint(ckpt_path)
        writable_directory(out, "output_dir")
        self._check_without_bounds()
        # The file's SHA-256 names the model a stopped evaluation's batches are of: the file
        # loaded (a last.ckpt written again in between gave the old model's batches the new
        # file's name, and a run of the evaluation again went on from them with the new model).
        (model, config, checkpoint), sha256 = samplers.digested(
            ckpt_path, lambda: load_model(ckpt_path, VAE, self.device, self.trusted))
        datamodule, source, matches = checked_data(
            config, checkpoint, ckpt_path, self.split, "eval", trusted=self.trusted,
            data_root=self.data_root, data_path=self.data_path,
            allow_other_data=self.allow_other_data, batch_size=self.batch_size)
        run_checks.check_grid(model, datamodule, self.split)  # other data may be off its grid
        loader = (datamodule.test_dataloader() if self.split == "test"
                  else datamodule.val_dataloader())
        if len(loader) == 0:
            raise ConfigError(f"eval.split={self.split}: the data hold no {self.split} images "
                              "(e.g. data.val_size=0); evaluate another split.")
        # What the metrics and the sample quality need, found before the (long) bound.
        truth = self._ground_truth(datamodule, model) if self.metrics else None
        judge = (self._quality_inputs(model, datamodule, config, ckpt_path)
                 if self.sample_quality else None)
        code_prior = None
        if self.fitted_prior is not None:  # a VQ-VAE's prior over codes, fitted after training
            from vae_lightning.pixelcnn import fitted_prior

            code_prior = fitted_prior(ckpt_path, model)

        def batches(what: str | None = f"eval k={self.k}"):
            """The split's batches as inputs, under a progress bar named ``what`` (None: no bar,
            for the first batch a timing pass takes: its bar was left at 0 % in a log)."""
            left = self.limit  # points still to score; None: the whole split
            total = len(loader) if left is None else min(len(loader),
                                                          math.ceil(left / self.batch_size))
            for x, y in tqdm(loader, desc=f"{what} on {self.split}", unit="batch",
                             total=total, disable=what is None):
                if left is not None:
                    if left <= 0:
                        break
                    x, y = x[:left], y[:left]
                    left -= len(x)
                yield datamodule.to_inputs((x.to(self.device), y.to(self.device)))

        points = len(loader.sampler.shard()) if self.limit is None else min(
            self.limit, len(loader.sampler.shard()))
        # A stopped evaluation of this checkpoint with these settings goes on where it stopped.
        identity = {"checkpoint_sha256": sha256, "seed": seed,
                    "split": self.split, "limit": self.limit, "batch_size": self.batch_size,
                    "data_source": source}
        discrete = code_length(model.decoder.likelihood, datamodule)
        if not self.bounds:  # the bounds of the evaluation already there, and what is asked
            # Read under the lock: a vae-eval writing there now replaces that eval.json when it
            # ends (read before, its bounds were those of the evaluation it replaced).
            held.enter_context(rundir.evaluating(out))
            earlier = self._earlier(out, ckpt_path, checkpoint, source, points)
            return self._finish(out, earlier, model, batches, discrete, truth, judge,
                                code_prior, seed)
        held.enter_context(rundir.evaluating(out))  # checks passed: writing begins here
        progress = log_likelihood.Progress(rundir.path(out, "eval_progress"),
                                           {**identity, "k": self.k})
        annealing = False  # AIS's timed run, whose memory is not the IW estimate's
        try:
            iw_hours = log_likelihood.refuse_unfinishable(
                model, next(batches(None)), points, self.k, self.chunk, self.max_hours,
                done=progress.batches_done() * self.batch_size)
            annealing = bool(self.ais_steps)
            ais_progress = partial(self._ais_progress, out, identity)  # of the start
            annealed_from = (self._refuse_ais(model, next(batches(None)), points, iw_hours,
                                              ais_progress) if self.ais_steps else None)
            annealing = False
            torch.manual_seed(seed)
            estimates = evaluate(model, batches(), self.k, self.chunk, progress)
        except torch.OutOfMemoryError:
            if annealing:
                raise ConfigError(self._ais_out_of_memory()) from None
            batch = torch.empty(1, device=self.device).expand(self.batch_size, *model.data_shape)
            chunk = self.chunk or auto_chunk(batch, self.k)  # a view: allocates nothing
            raise ConfigError(
                f"The evaluation ran out of memory on {self.device}, scoring eval.chunk={chunk} "
                f"samples for eval.batch_size={self.batch_size} points per decoder pass (memory "
                "~ chunk x batch_size x pixels, times the decoder's widest layer); nothing was "
                "written. Give a smaller eval.chunk or eval.batch_size (the estimate does not "
                "depend on either), or eval.device=cpu.") from None
        results = {
            "elbo": asdict(estimates["elbo"]),
            "iw": asdict(estimates["iw"]),
            "k": self.k,
            "split": self.split,
            "n": estimates["n"],
            "active_units": estimates["active_units"],
            "latent": estimates["latent"],
            **{key: estimates[key] for key in ("kl", "mi", "mi_se") if key in estimates},
            **({"layers": estimates["layers"]} if "layers" in estimates else {}),
            "bound_of": estimates["bound_of"],
            # Each point's estimates, in the split's order, and which points they are (the
            # split's SHA-256 as read, its first n; binarized how): vae-compare pairs two
            # evaluations' points, a standard error of the difference far below either's.
            "per_point": {name: [round(v, PER_POINT_DECIMALS) for v in
                                 estimates[f"{name}_per_point"].tolist()]
                          for name in ("iw", "elbo")},
            "points": {"split_sha256": datamodule.digests.get(self.split),
                       "binarize": getattr(datamodule, "binarize", "none")},
            "proposal": model.objective.proposal,
            "input_dim": math.prod(model.data_shape),
            "data": getattr(datamodule, "name", None),
            "data_source": source,
            "data_matches_checkpoint": matches,
            "units": units(discrete, model.pixel_values()),
            "checkpoint": str(Path(ckpt_path).resolve()),
            "train_samples_seen": checkpoint.get("samples_seen"),
            "seed": seed,
            # The estimates' time, over every run of a stopped and resumed evaluation.
            **{key: estimates[key] for key in ("seconds", "seconds_of_earlier_runs")},
        }
        if not discrete:
            for name in ("elbo", "iw"):
                results[name]["bits_per_dim"] = results[name]["bits_per_dim_se"] = None
        if annealed_from is not None:
            try:
                results["ais"] = self._ais(model, batches(f"AIS, {self.ais_steps} steps"),
                                           annealed_from, seed, discrete,
                                           estimates["iw_per_point"], estimates["bound_of"],
                                           ais_progress(annealed_from))
            except torch.OutOfMemoryError:
                raise ConfigError(self._ais_out_of_memory()) from None
        if hasattr(model.objective, "classify"):  # a semi-supervised model's q(y|x) (M2)
            with torch.no_grad():
                found = [(model.objective.classify(x).argmax(-1).cpu(), y.cpu())
                         for x, y in batches()]
            guess, truth_y = (torch.cat(part) for part in zip(*found))
            # Of the points with a label: a hidden one (-1, data=array's) was counted wrong.
            known = truth_y >= 0
            if known.any():
                results["classification_error"] = (
                    (guess[known] != truth_y[known]).double().mean().item())
                log.info("classification error of q(y|x) on %s: %.4f (%d labelled points of "
                         "%d)", self.split, results["classification_error"],
                         int(known.sum()), len(known))
            else:
                log.info("No classification error of q(y|x): the %s points have no labels.",
                         self.split)
        results = self._finish(out, results, model, batches, discrete, truth, judge,
                               code_prior, seed)
        progress.remove()
        if annealed_from is not None:
            ais_progress(annealed_from).remove()
        return results

    def _finish(self, out: Path, results: dict[str, Any], model: VAE, batches: Any,
                discrete: bool, truth: Any, judge: Any, code_prior: Any,
                seed: int) -> dict[str, Any]:
        """``results`` (the bounds) with the evaluations asked besides them, written to
        eval.json (an earlier one of other settings kept beside it); returned with its path."""
        if code_prior is not None:
            from vae_lightning.pixelcnn import prior_bound

            with torch.no_grad():
                elbo = torch.cat([prior_bound(model, code_prior, x).elbo.cpu()
                                  for x, _ in batches()])
            fitted = asdict(Estimate.of(elbo, math.prod(model.data_shape)))
            if not discrete:
                fitted["bits_per_dim"] = fitted["bits_per_dim_se"] = None
            # q is one-hot: the ELBO with the fitted prior is log p(x|z_q) + log p(k(x)).
            results["fitted_prior"] = {"sampler": self.fitted_prior, "elbo": fitted}
        # Added to scores of the same kind already there (eval.bounds=false: KID after FID
        # keeps FID), where they were computed the same way; else they replace them.
        if truth is not None:
            results["disentanglement"] = _added(
                results.get("disentanglement"), self._disentanglement(model, truth, seed),
                scores=("scores", "options"))
        if judge is not None:
            results["sample_quality"] = _added(
                results.get("sample_quality"), self._judge_samples(model, *judge, seed),
                scores=(*quality.SCORES, "nearest_k"))
        out.mkdir(parents=True, exist_ok=True)
        path = rundir.path(out, "eval")
        _keep_what_is_replaced(path, results)
        rundir.write_json(path, results)
        results["path"] = str(path)
        return results

    def _check_without_bounds(self) -> None:
        """``bounds=False`` with nothing else asked, or with AIS (paired with its own run's IW
        estimate, point by point), is refused before the model is read."""
        if self.bounds:
            return
        if self.ais_steps:
            raise ConfigError(f"eval.bounds=false with eval.ais_steps={self.ais_steps}: AIS is "
                              "compared with the IW estimate of its own run, point by point; "
                              "leave eval.bounds true to run both.")
        if not (self.metrics or self.sample_quality or self.fitted_prior):
            raise ConfigError("eval.bounds=false: nothing else is asked (eval.sample_quality, "
                              "eval.metrics or eval.fitted_prior), so there is nothing to "
                              "evaluate; give one of them, or leave eval.bounds true.")

    def _earlier(self, out: Path, ckpt_path: str, checkpoint: dict[str, Any],
                 source: dict[str, Any], points: int) -> dict[str, Any]:
        """The bounds ``bounds=False`` takes: the eval.json in ``out``, if it is of this
        checkpoint (its path and samples seen), this split and these data, and, for the fitted
        prior's bound (scored on this command's ``points``, beside the bounds), of as many
        points; else ``ConfigError`` saying what differs. Its keys are checked (``EARLIER``)."""
        path = rundir.path(out, "eval")
        fix = "leave eval.bounds true to estimate them, or give the output_dir that holds them"
        if not path.is_file():
            raise ConfigError(f"eval.bounds=false: there is no evaluation with bounds in {path} "
                              f"to add to; {fix}.")
        earlier = json_files.read_object(path, "the evaluation eval.bounds=false adds to", fix,
                                         ConfigError, EARLIER, required=EARLIER_REQUIRED)
        now = {"checkpoint": str(Path(ckpt_path).resolve()),
               "train_samples_seen": checkpoint.get("samples_seen"), "split": self.split,
               "data_source": source}
        if self.fitted_prior is not None:  # its bound is of this command's points
            now["n"] = points
        differ = [f"{key} {earlier.get(key)!r} (this one: {value!r})"
                  for key, value in now.items() if _read(earlier, key) != _read(now, key)]
        if differ:
            points_fix = (f" (eval.fitted_prior's bound is scored on the points of eval.limit="
                          f"{self.limit}: give eval.limit={earlier['n']})"
                          if "n" in now and earlier["n"] != points else "")
            raise ConfigError(f"eval.bounds=false: the evaluation in {path} is of another "
                              f"{', '.join(differ)}{points_fix}; {fix}.")
        earlier.pop("path", None)
        return earlier

    def _ais_out_of_memory(self) -> str:
        return (f"AIS (eval.ais_steps={self.ais_steps}) ran out of memory on {self.device}, "
                f"moving eval.ais_chains={self.ais_chains} chains of eval.batch_size="
                f"{self.batch_size} points at once (memory ~ chains x batch_size x pixels, "
                "times the decoder's widest layer, and its gradient); eval.json was not written. "
                "Give fewer eval.ais_chains (the IW estimate's finished batches are kept and "
                "gone on from), a smaller eval.batch_size, or eval.device=cpu.")

    def _ais_progress(self, out: Path, identity: dict[str, Any], start: str) -> ais.Progress:
        """Where this evaluation's AIS from ``start`` stands (``identity``: the evaluation's
        settings; ``out``: its run directory)."""
        return ais.Progress(rundir.path(out, "ais_progress"), {
            **identity, "steps": self.ais_steps, "chains": self.ais_chains,
            "leapfrog": self.ais_leapfrog, "start": start})

    def _refuse_ais(self, model: VAE, batch: tuple[Tensor, Tensor], points: int,
                    iw_hours: float = 0.0,
                    progress: Callable[[str], ais.Progress] | None = None) -> str:
        """Where AIS starts (``ais_start``, ``auto`` resolved), after refusing what it cannot
        run on this model and an estimate whose time, with the IW estimate's ``iw_hours``
        (checked on its own first), is over ``max_hours``; the points a stopped run of this
        AIS (``progress``: its ``ais.Progress``, given the start) scored already are not
        counted."""
        start = ais.resolve_start(model, self.ais_start)
        problem = ais.refusal(model, start)
        if problem is not None:
            # The Python API's words for the start, in vae-eval's key.
            problem = problem.replace("use start='prior'", "use eval.ais_start=prior (or auto)")
            raise ConfigError(f"eval.ais_steps={self.ais_steps} (eval.ais_start="
                              f"{self.ais_start}): {problem}; or leave eval.ais_steps=0.")
        if self.max_hours is not None:
            done = 0 if progress is None else progress(start).batches_done() * self.batch_size
            left = points - min(done, points)
            hours = ais.hours(model, batch, left, self.ais_steps, self.ais_chains,
                              self.ais_leapfrog, start)
            if hours + iw_hours > self.max_hours:
                with_iw = (f" (with the IW estimate's {iw_hours:.3g}: {hours + iw_hours:.3g})"
                           if iw_hours else "")
                scored = (f" (the other {points - left} scored by a stopped run)"
                          if left < points else "")
                raise ConfigError(
                    f"eval.ais_steps={self.ais_steps} with eval.ais_chains={self.ais_chains} on "
                    f"{left} points{scored} would take about {hours:.3g} hours on "
                    f"{batch[0].device}"
                    f"{with_iw}, above eval.max_hours={self.max_hours:g}; nothing was run. Set "
                    "eval.limit (AIS on a few hundred points is its use on a CPU), fewer steps or "
                    "chains, or raise eval.max_hours (null: no limit).")
        return start

    def _ais(self, model: VAE, batches: Any, start: str, seed: int, discrete: bool,
             iw: Tensor, bound_of: str,
             progress: ais.Progress | None = None) -> dict[str, Any]:
        """eval.json's ``ais``: the AIS estimate of log p(x) over the points, with its standard
        error (over the points), what it was run with, and ``minus_iw``: the mean over the points
        of AIS minus the IW estimate ``iw`` (per point, the same points in the same order) with
        its standard error. The two estimates' own errors are mostly the points' spread, which
        a paired difference removes: it says whether AIS is the tighter bound. ``bound_of``: the
        IW estimate's words (``log_likelihood.bound_of``), which AIS's estimate shares."""
        torch.manual_seed(seed)
        found = ais.over_batches(model, batches, self.ais_steps, self.ais_chains,
                                 self.ais_leapfrog, start, progress)
        dims = math.prod(model.data_shape)
        estimate = asdict(Estimate.of(found["log_px"], dims))
        paired = asdict(Estimate.of(found["log_px"].double() - iw.double(), dims))
        if not discrete:
            estimate["bits_per_dim"] = estimate["bits_per_dim_se"] = None
        minus_iw = {"nats": paired["nats"], "nats_se": paired["nats_se"]}
        # A conditional VAE's estimates are of log p(x|y) (bound_of), M2's and the rest's log p(x).
        of = "log p(x|y)" if bound_of.startswith("log p(x|y)") else "log p(x)"
        log.info("AIS (%d steps, %d chains, from the %s): %s %.4f +- %.4f nats, %.4f +- "
                 "%.4f above the IW estimate", self.ais_steps, self.ais_chains, start, of,
                 estimate["nats"], estimate["nats_se"], minus_iw["nats"], minus_iw["nats_se"])
        se = minus_iw["nats_se"] if minus_iw["nats_se"] == minus_iw["nats_se"] else 0.0
        if minus_iw["nats"] + 2 * se < 0:  # below the IW estimate beyond its noise
            other = (" or start from q, eval.ais_start=posterior" if start == "prior"
                     and ais.refusal(model, "posterior") is None else "")
            log.warning("AIS is %.3f nats below the IW estimate (k=%d) on these points: too few "
                        "annealing steps for this model (eval.ais_steps=%d: raise it%s). Both "
                        "are lower bounds on %s: the larger is the tighter.",
                        -minus_iw["nats"], self.k, self.ais_steps, other, of)
        return {**estimate, "minus_iw": minus_iw, "steps": self.ais_steps,
                "chains": self.ais_chains, "leapfrog": self.ais_leapfrog, "start": start,
                "n": len(found["log_px"]), "acceptance": found["acceptance"],
                "ess_min": found["ess_min"], "seconds": round(found["seconds"], 3)}

    def _ground_truth(self, datamodule: Any, model: VAE) -> ground_truth.GroundTruth:
        """The ground-truth factors of the data, which the metrics need; a model conditional on
        a label (``model=cvae``, ``m2``: q(z|x, y)) is refused before the bounds, not after:
        the metrics encode images of the factors, which come without the label it needs."""
        if model._conditional:
            raise ConfigError(
                f"eval.metrics={list(self.metrics)}: this model is conditional on a class label "
                f"(model.classes={model.classes}: q(z|x, y) needs each image's y), and the "
                "disentanglement metrics encode images drawn from the ground-truth factors, "
                "which come without one; they score a model whose q(z|x) takes x alone. Leave "
                "eval.metrics empty for this model.")
        if not hasattr(datamodule, "ground_truth"):
            raise ConfigError(
                f"eval.metrics={list(self.metrics)}: the model was trained on data="
                f"{getattr(datamodule, 'name', type(datamodule).__name__)}, which has no "
                "ground-truth factors; the disentanglement metrics need data generated by known "
                "factors (data=dsprites or data=dsprites_small). Leave eval.metrics empty for "
                "these data.")
        return datamodule.ground_truth()

    def _disentanglement(self, model: VAE, truth: ground_truth.GroundTruth,
                         seed: int) -> dict[str, Any]:
        """Each of ``metrics`` over the seeds, with the settings it ran with."""
        seeds = [seed + i for i in range(self.metric_seeds)]
        found = disentanglement.evaluate(
            self.metrics, ground_truth.model_codes(model, truth, self.batch_size),
            truth.sizes, seeds, self.metric_options,
            log=lambda what: log.info("Disentanglement: %s", what))
        for score, value in found["scores"].items():
            spread = f" +- {value['std']:.3f}" if value["std"] is not None else ""
            log.info("%s = %.3f%s (%d seed%s)", score, value["mean"], spread, len(seeds),
                     "" if len(seeds) == 1 else "s")
        options = {name: {**disentanglement.metric_options(name),
                          **self.metric_options.get(name, {})} for name in self.metrics}
        return {"scores": found["scores"], "seeds": seeds, "options": options,
                "factors": dict(zip(truth.names, truth.sizes)),
                "representation": "the location of q(z|x) (encoder.location: a Gaussian "
                                  "posterior's mean), of images drawn uniformly from the "
                                  "product of the factors",
                "seconds": found["seconds"]}

    def _quality_inputs(self, model: VAE, datamodule: Any, config: dict[str, Any],
                        ckpt_path: str) -> tuple[Any, dict[str, Any], Tensor]:
        """The feature network, what it is, and the real images of the split (their pixel
        values in [0, 1], before any binarization) that the samples are compared with."""
        if model.trained_on == "vectors":  # samples are drawn for the classes in turn
            raise ConfigError("eval.sample_quality: the model was trained on condition vectors "
                              "(data.condition), and its samples are drawn for classes, not for "
                              "the data's conditions; leave eval.sample_quality empty ([]).")
        if self.features == "inception":
            net = quality.inception_features(self.inception_weights, "eval.inception_weights")
            about: dict[str, Any] = {"features": "inception",
                                     "inception_weights": str(self.inception_weights)}
        else:
            path = self.classifier or quality.classifier_path(datamodule.root, datamodule.name)
            net, record = quality.load_classifier(path, model.data_shape, "eval.classifier",
                                                  datamodule.name, datamodule.root)
            if record.get("data") != datamodule.name:
                log.warning("The feature classifier %s was trained on data=%s, not on the "
                            "model's data=%s: its features may not describe these images.",
                            path, record.get("data"), datamodule.name)
            about = {"features": "classifier", "classifier": str(path), "classifier_record":
                     {k: record.get(k) for k in ("data", "test_accuracy", "epochs", "seed",
                                                 "num_features")}}
        source = datamodule
        if getattr(datamodule, "binarize", "none") != "none":  # the pixel values themselves
            source = find_data({**config, "data": {**config["data"], "binarize": "none"}},
                               ckpt_path, "eval", trusted=self.trusted, data_root=self.data_root,
                               data_path=self.data_path, batch_size=self.batch_size)[0]
            source.setup(STAGES[self.split])
        real = source.evaluation_data(self.split, limit=self.samples)
        if "precision_recall" in self.sample_quality:
            quality.check_neighbours(len(real), self.samples, self.nearest_k)
        return net, about, real

    def _judge_samples(self, model: VAE, net: Any, about: dict[str, Any], real: Tensor,
                       seed: int) -> dict[str, Any]:
        """The sample-quality scores of ``samples`` images of the model against ``real``."""
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            fake = quality.generate(model, self.samples, self.sample_mean)
        log.info("Sample quality: features of %d real and %d generated images.", len(real),
                 len(fake))
        real_features = quality.features(net, real, device=self.device)
        fake_features = quality.features(net, fake, device=self.device)
        found = quality.scores(self.sample_quality, real_features, fake_features,
                               self.kid_subsets, self.kid_subset_size, self.nearest_k, seed)
        for name in ("fid", "precision", "recall"):
            if found.get(name) is not None:
                log.info("%s = %.4g", name, found[name])
        if "kid" in found:
            log.info("kid = %.4g +- %.2g", found["kid"]["mean"], found["kid"]["std"])
        return {**about, **found, "real": len(real), "generated": len(fake),
                "split": self.split,
                "samples_are": "E[x|z]" if self.sample_mean else "x ~ p(x|z)",
                "seed": seed, "seconds": round(time.perf_counter() - start, 1)}


def _added(earlier: Any, new: dict[str, Any], scores: Sequence[str]) -> dict[str, Any]:
    """``new`` scores with those of ``earlier`` that it does not hold, where ``earlier`` was
    computed with the same settings (every key but ``scores`` and the seconds taken); mappings
    among ``scores`` (the metrics' scores and options) are merged a level down."""
    if not isinstance(earlier, dict) or any(
            earlier.get(key) != value for key, value in new.items()
            if key not in scores and key != "seconds"):
        return new
    merged = {**earlier, **new}
    for key in scores:
        if isinstance(earlier.get(key), dict) and isinstance(new.get(key), dict):
            merged[key] = {**earlier[key], **new[key]}
    return merged


def _plain(node: Any) -> Any:
    """A config node (mappings and lists, e.g. OmegaConf's) as plain dicts and lists."""
    if isinstance(node, Mapping):
        return {key: _plain(value) for key, value in node.items()}
    if isinstance(node, Sequence) and not isinstance(node, str):
        return [_plain(value) for value in node]
    return node
