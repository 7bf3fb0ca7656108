"""Evaluation of a trained VAE (``vae-eval`` / ``eval.py``): the ELBO and the importance-weighted
estimate of log p(x) on the test (or validation) data, with standard errors, in nats per data
point and bits/dim.

For each data point x, k samples z_i ~ q(z|x) give log-weights
log w_i = log p(x, z_i) - log q(z_i|x) and two estimates (``objectives.importance_weighted``):
the ELBO, (1/k) sum_i log w_i (estimator A with L = k), and the IW estimate (Burda et al.
2015), log (1/k) sum_i w_i, a lower bound on log p(x) that tightens as k grows and is the
standard test log-likelihood at k = 5000. It is >= the ELBO of the same samples.

On request, also what the latents and samples are worth: disentanglement metrics against the
ground-truth factors of the data (``metrics``: ``disentanglement``) and sample quality (FID, KID,
precision and recall in a feature space: ``sample_quality``), into the same eval.json.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.distributions import constraints

from vae_lightning import disentanglement, rundir
from vae_lightning import sample_quality as quality
from vae_lightning.args import (
    ArgumentError,
    PositiveFloat,
    PositiveInt,
    checked,
    fail,
    locations,
)
from vae_lightning.checkpoints import (
    build_trusted,
    data_differences,
    load_model,
    trusted_class,
)
from vae_lightning.errors import CheckpointError, ConfigError, DataError
from vae_lightning.files import kind, open_regular, writable_directory
from vae_lightning.module import VAE
from vae_lightning.objectives import auto_chunk, importance_weighted
from vae_lightning.posteriors.hierarchy import layer_kls


@dataclass
class Estimate:
    """Mean over data points of a per-point estimate, with its standard error, in nats and
    bits/dim (bits/dim = -nats / (D ln 2), D values per image: lower is better)."""

    nats: float
    nats_se: float
    bits_per_dim: float
    bits_per_dim_se: float

    @classmethod
    def of(cls, values: Tensor, dims: int) -> Estimate:
        values = values.double()
        se = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else math.nan
        per_bit = dims * math.log(2)
        mean = values.mean().item()
        return cls(mean, se, -mean / per_bit, se / per_bit)


log = logging.getLogger(__name__)
Metric = Literal["beta_vae", "factor_vae", "mig", "sap", "dci", "modularity"]
Quality = Literal["fid", "kid", "precision_recall"]
ACTIVE = 1e-2  # a latent dimension is active when Cov_x(E_q[z_j]) exceeds this (Burda et al.)


def evaluate(model: VAE, batches: Iterable[Tensor], k: int,
             chunk: int | None = None) -> dict[str, Any]:
    """The ELBO and IW estimates over all ``batches`` (model inputs on the model's device):
    ``{"elbo": Estimate, "iw": Estimate, "n": number of data points, "active_units": the
    latent dimensions whose posterior mean varies over the data by more than ACTIVE}``; with
    stochastic layers, also ``"layers"``: each layer's size, active units and (where q and p
    are both chains over the layers) KL in nats, from one draw per data point."""
    model.eval()
    elbos, iws, means, kls = [], [], [], []
    for x in batches:
        elbo, iw = importance_weighted(model, x, k, chunk)
        elbos.append(elbo.cpu())
        iws.append(iw.cpu())
        with torch.no_grad():
            q = model.encoder(x)
            means.append(model.encoder.location(q).cpu().double())
            if model.encoder.posterior.layers:
                kls.append(layer_kls(q, model.prior.distribution()))
    elbo, iw = torch.cat(elbos), torch.cat(iws)
    dims = math.prod(model.data_shape)
    activity = torch.cat(means).var(0)
    results = {"elbo": Estimate.of(elbo, dims), "iw": Estimate.of(iw, dims), "n": len(iw),
               "active_units": int((activity > ACTIVE).sum()), "latent": len(activity)}
    sizes = model.encoder.posterior.layers
    if sizes:
        kl = torch.cat(kls, dim=1).double().mean(1).tolist() if kls[0] is not None else None
        results["layers"] = [
            {"size": size, "active_units": int((part > ACTIVE).sum()),
             "kl": kl[i] if kl is not None else None}
            for i, (size, part) in enumerate(zip(sizes, activity.split(sizes)))]
    return results


class Evaluation:
    """The ``eval`` options: ``k`` importance samples per data point, scored ``chunk`` at a time
    (memory ~ chunk x batch_size x pixels; None: ``objectives.auto_chunk``, sized to the cache on
    a CPU), ``batch_size`` data points per batch, on the ``split``
    (``test`` or ``val``), its first ``limit`` points only when set (a quicker estimate, e.g. on a
    CPU), on ``device`` (``auto``: CUDA when available). ``trusted``: dotted names
    of your own classes a checkpoint may build (see ``checkpoints.build_trusted``).

    The data are the user's to name, never the checkpoint's: the checkpoint says which of this
    package's data sets the model was trained on and with which options (its shape, scale,
    binarization, splits), but where the files are is ``data_root`` / ``data_path`` (default:
    the run's own record, ``<run>/.hydra/config.yaml``, else the data root of the configs,
    ``$VAE_DATA_DIR`` or ``data``), nothing is downloaded and no loader workers start. The
    split read is checked against the checkpoint's record of the data (size and SHA-256):
    other data are refused unless ``allow_other_data`` (eval.json then says so).

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
    ``kid_subset_size``, precision and recall with ``nearest_k`` neighbours. Everything these
    need is checked before the bound is estimated."""

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
                 nearest_k: PositiveInt = 3) -> None:
        self.k, self.chunk, self.batch_size, self.split = k, chunk, batch_size, split
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
        self.nearest_k = nearest_k

    def __call__(self, ckpt_path: str, seed: int, output_dir: str | None) -> dict[str, Any]:
        """Rebuild the model of ``ckpt_path`` and its data from where the user keeps them,
        estimate, write ``eval.json`` into ``output_dir`` (default: the checkpoint's run
        directory) and return its content."""
        from tqdm.auto import tqdm

        out = Path(output_dir) if output_dir else rundir.of_checkpoint(ckpt_path)
        writable_directory(out, "output_dir")
        model, config, checkpoint = load_model(ckpt_path, VAE, self.device, self.trusted)
        datamodule, source = self._data(config, ckpt_path)
        datamodule.setup("test" if self.split == "test" else "validate")
        matches = self._check_data(checkpoint, datamodule, ckpt_path, source)
        loader = (datamodule.test_dataloader() if self.split == "test"
                  else datamodule.val_dataloader())
        if len(loader) == 0:
            raise ConfigError(f"eval.split={self.split}: the data hold no {self.split} images "
                              "(e.g. data.val_size=0); evaluate another split.")
        # What the metrics and the sample quality need, found before the (long) bound.
        truth = self._ground_truth(datamodule) if self.metrics else None
        judge = (self._quality_inputs(model, datamodule, config, ckpt_path)
                 if self.sample_quality else None)

        def batches():
            left = self.limit  # points still to score; None: the whole split
            total = len(loader) if left is None else min(len(loader),
                                                          math.ceil(left / self.batch_size))
            for x, y in tqdm(loader, desc=f"eval k={self.k} on {self.split}", unit="batch",
                             total=total):
                if left is not None:
                    if left <= 0:
                        break
                    x, y = x[:left], y[:left]
                    left -= len(x)
                yield datamodule.to_inputs((x.to(self.device), y))[0]

        points = len(loader.sampler.shard()) if self.limit is None else min(
            self.limit, len(loader.sampler.shard()))
        try:
            self._refuse_unfinishable(model, next(batches()), points)
            torch.manual_seed(seed)
            estimates = evaluate(model, batches(), self.k, self.chunk)
        except torch.OutOfMemoryError:
            batch = torch.empty(1, device=self.device).expand(self.batch_size, *model.data_shape)
            chunk = self.chunk or auto_chunk(batch, self.k)  # a view: allocates nothing
            raise ConfigError(
                f"The evaluation ran out of memory on {self.device}, scoring eval.chunk={chunk} "
                f"samples for eval.batch_size={self.batch_size} points per decoder pass (memory "
                "~ chunk x batch_size x pixels, times the decoder's widest layer); nothing was "
                "written. Give a smaller eval.chunk or eval.batch_size (the estimate does not "
                "depend on either), or eval.device=cpu.") from None
        discrete = code_length(model.decoder.likelihood, datamodule)
        results = {
            "elbo": asdict(estimates["elbo"]),
            "iw": asdict(estimates["iw"]),
            "k": self.k,
            "split": self.split,
            "n": estimates["n"],
            "active_units": estimates["active_units"],
            "latent": estimates["latent"],
            **({"layers": estimates["layers"]} if "layers" in estimates else {}),
            "input_dim": math.prod(model.data_shape),
            "data": getattr(datamodule, "name", None),
            "data_source": source,
            "data_matches_checkpoint": matches,
            "units": units(discrete),
            "checkpoint": str(Path(ckpt_path).resolve()),
            "train_samples_seen": checkpoint.get("samples_seen"),
            "seed": seed,
        }
        if not discrete:
            for name in ("elbo", "iw"):
                results[name]["bits_per_dim"] = results[name]["bits_per_dim_se"] = None
        if truth is not None:
            results["disentanglement"] = self._disentanglement(model, truth, seed)
        if judge is not None:
            results["sample_quality"] = self._judge_samples(model, *judge, seed)
        out.mkdir(parents=True, exist_ok=True)
        path = rundir.path(out, "eval")
        rundir.write_json(path, results)
        results["path"] = str(path)
        return results

    def _data(self, config: dict[str, Any], ckpt_path: str) -> tuple[Any, dict[str, Any]]:
        """The data module of the checkpoint's data set and options, reading from where the
        user keeps the data (see the class docstring), and where that is."""
        node = config.get("data")
        if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
            raise CheckpointError(f"Checkpoint {ckpt_path} names no data set (its run config "
                                  "has no data._target_).")
        module = trusted_class(node, "data", ckpt_path, self.trusted)
        record = _run_record_data(rundir.of_checkpoint(ckpt_path))
        given = {"root": self.data_root, "path": self.data_path}
        source: dict[str, Any] = {}
        values = dict(node)
        for name in locations(module):
            if given.get(name) is not None:
                values[name], source[name] = given[name], "command line"
            elif record.get(name) is not None:
                values[name], source[name] = record[name], "run record"
            elif name == "root":
                values[name], source[name] = os.environ.get("VAE_DATA_DIR", "data"), "default"
            else:
                values.pop(name, None)
                source[name] = "default"
            source[f"data.{name}"] = values.get(name)
        # Switches that make the data module fetch, write or spawn: off.
        values.update(download=False, num_workers=0, on_device=False, steps_per_batch=1,
                      eval_batch_size=self.batch_size)
        try:
            return build_trusted(values, "data", ckpt_path, self.trusted), source
        except CheckpointError as err:
            if "path" in str(err) and self.data_path is None:
                raise ConfigError(
                    f"{err} The model was trained on data={node.get('_target_')} read from a "
                    "path the run's record does not give: name it with eval.data_path=...") \
                    from None
            raise

    def _ground_truth(self, datamodule: Any) -> disentanglement.GroundTruth:
        """The ground-truth factors of the data, which the metrics need."""
        if not hasattr(datamodule, "ground_truth"):
            raise ConfigError(
                f"eval.metrics={list(self.metrics)}: the model was trained on data="
                f"{getattr(datamodule, 'name', type(datamodule).__name__)}, which has no "
                "ground-truth factors; the disentanglement metrics need data generated by known "
                "factors (data=dsprites or data=dsprites_small). Leave eval.metrics empty for "
                "these data.")
        return datamodule.ground_truth()

    def _disentanglement(self, model: VAE, truth: disentanglement.GroundTruth,
                         seed: int) -> dict[str, Any]:
        """Each of ``metrics`` over the seeds, with the settings it ran with."""
        seeds = [seed + i for i in range(self.metric_seeds)]
        found = disentanglement.evaluate(
            self.metrics, disentanglement.model_codes(model, truth, self.batch_size),
            truth.sizes, seeds, self.metric_options,
            log=lambda what: log.info("Disentanglement: %s", what))
        for score, value in found["scores"].items():
            spread = f" +- {value['std']:.3f}" if value["std"] is not None else ""
            log.info("%s = %.3f%s (%d seeds)", score, value["mean"], spread, len(seeds))
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
        if self.features == "inception":
            net = quality.inception_features(self.inception_weights, "eval.inception_weights")
            about: dict[str, Any] = {"features": "inception",
                                     "inception_weights": str(self.inception_weights)}
        else:
            path = self.classifier or quality.classifier_path(datamodule.root, datamodule.name)
            net, record = quality.load_classifier(path, model.data_shape, "eval.classifier")
            if record.get("data") != datamodule.name:
                log.warning("The feature classifier %s was trained on data=%s, not on the "
                            "model's data=%s: its features may not describe these images.",
                            path, record.get("data"), datamodule.name)
            about = {"features": "classifier", "classifier": str(path), "classifier_record":
                     {k: record.get(k) for k in ("data", "test_accuracy", "epochs", "seed",
                                                 "num_features")}}
        source = datamodule
        if getattr(datamodule, "binarize", "none") != "none":  # the pixel values themselves
            source = self._data({**config, "data": {**config["data"], "binarize": "none"}},
                                ckpt_path)[0]
            source.setup("test" if self.split == "test" else "validate")
        real = source.evaluation_data(self.split)[:self.samples]
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

    def _check_data(self, checkpoint: dict[str, Any], datamodule: Any, ckpt_path: str,
                    source: dict[str, Any]) -> bool | None:
        """Whether the split read is the one the checkpoint was trained and tested with (None:
        the checkpoint records no identity); other data are refused unless allowed."""
        identity = datamodule.identity()
        identity["splits"] = {s: v for s, v in identity["splits"].items() if s == self.split}
        differences = data_differences(checkpoint, identity)
        if differences is None:
            log.warning("Checkpoint %s records no identity of its data (written by an older "
                        "version): the %s data read from %s are not checked.", ckpt_path,
                        self.split, _where(source))
            return None
        if differences and not self.allow_other_data:
            raise DataError(
                f"The {self.split} data read from {_where(source)} are not the data checkpoint "
                f"{ckpt_path} was trained with: {'; '.join(differences)}. Name the right data "
                "with eval.data_root=... (or eval.data_path=...), or evaluate on these data "
                "anyway with eval.allow_other_data=true (eval.json then says so).")
        if differences:
            log.warning("Evaluating on other data than the checkpoint's (eval.allow_other_data): "
                        "%s.", "; ".join(differences))
        return not differences

    def _refuse_unfinishable(self, model: VAE, x: Tensor, points: int) -> None:
        """Time one decoder pass on the first batch (in a forked random stream: the estimate's
        draws stay those of the seed) and refuse an evaluation that would take more than
        ``max_hours``."""
        if self.max_hours is None:
            return
        chunk = min(self.k, self.chunk or auto_chunk(x, self.k))
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            importance_weighted(model, x, chunk, chunk)  # warm-up
            start = time.perf_counter()
            importance_weighted(model, x, chunk, chunk)
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            seconds = time.perf_counter() - start
        passes = math.ceil(self.k / chunk) * math.ceil(points / len(x))
        hours = seconds * passes / 3600
        if hours > self.max_hours:
            raise ConfigError(
                f"eval.k={self.k} on {points} points would take about {hours:.3g} hours on "
                f"{self.device} (one pass of {chunk} samples x {len(x)} points took "
                f"{seconds:.3g} s), above eval.max_hours={self.max_hours:g}; nothing was run. "
                "Lower eval.k or set eval.limit, or raise eval.max_hours (null: no limit).")


def _plain(node: Any) -> Any:
    """A config node (mappings and lists, e.g. OmegaConf's) as plain dicts and lists."""
    if isinstance(node, Mapping):
        return {key: _plain(value) for key, value in node.items()}
    if isinstance(node, Sequence) and not isinstance(node, str):
        return [_plain(value) for value in node]
    return node


def code_length(likelihood: Any, datamodule: Any) -> bool:
    """Whether -log2 p(x) / D is a code length in bits per dimension: the likelihood is a
    probability of discrete pixel values, and the data are those values (binary pixels for a
    Bernoulli likelihood: binarized data)."""
    if likelihood.support is constraints.boolean:
        return getattr(datamodule, "binarize", "none") != "none"
    return likelihood.discrete


def units(discrete: bool) -> str:
    """What eval.json's numbers are, in words."""
    if discrete:
        return ("nats per data point; bits/dim = -nats / (input_dim ln 2): the likelihood is a "
                "probability of the discrete (binary or 8-bit) pixel values, so -log2 p(x) / "
                "input_dim is a code length.")
    return ("nats per data point: the likelihood is a density of pixel values in [0, 1], so "
            "these are log densities (they can be positive); they shift by input_dim x log of "
            "the pixel scale when the data are rescaled, so no bits/dim is given (it is not a "
            "code length without a dequantization).")


def _where(source: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value} ({source[key[5:]]})" for key, value in source.items()
                     if key.startswith("data.")) or "the data module's defaults"


def _run_record_data(run: Path) -> dict[str, str]:
    """The data locations (root, path, ...) of the run's own record, ``.hydra/config.yaml``
    written when it started, read as plain YAML: plain strings, and ``${oc.env:NAME,default}``
    looked up in the environment; any other interpolation is not resolved (left out)."""
    import yaml

    record = run / rundir.HYDRA / "config.yaml"
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


def device_of(key: str, device: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:<index>``, ``mps``; refused,
    naming ``key``, when torch does not know it or this machine lacks it."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        found = torch.device(device)
    except (RuntimeError, ValueError):
        fail(key, "device", device, "expected auto, cpu, cuda, cuda:<index> or mps")
    if found.type == "cuda" and not torch.cuda.is_available():
        fail(key, "device", device, "CUDA is not available on this machine (or this torch is a "
             "CPU build); use auto or cpu")
    count = torch.cuda.device_count()
    if found.type == "cuda" and found.index is not None and found.index >= count:
        fail(key, "device", device, f"this machine has {torch.cuda.device_count()} CUDA "
             "device(s)")
    if found.type == "mps" and not torch.backends.mps.is_available():
        fail(key, "device", device, "MPS is not available on this machine; use auto or cpu")
    if found.type not in ("cpu", "cuda", "mps"):
        fail(key, "device", device, "expected auto, cpu, cuda, cuda:<index> or mps")
    return found
