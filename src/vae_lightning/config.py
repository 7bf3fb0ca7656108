"""Configuration schema and validation, run before anything heavy starts.

The model group is typed by a structured config (``VAEConfig``), so Hydra rejects a wrong type or
an unknown model key when it composes. ``validate`` then checks ranges, the keys of every other
``_target_`` node against its constructor, and combinations that cannot work, and raises one
``ConfigError`` naming each bad key, its value and what is accepted.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

import vae_lightning.resolvers  # noqa: F401

log = logging.getLogger(__name__)

HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}
# Keys of a ``_target_`` node that the framework consumes before instantiating it.
OWN_KEYS = {"trainer": {"max_samples", "steps_per_batch"}}


class ConfigError(ValueError):
    """An invalid configuration, with a message meant for the user."""


@dataclass
class VAEConfig:
    """Schema of ``conf/model/*.yaml`` (see ``vae_lightning.module.VAE`` for the meaning)."""

    _target_: str = "vae_lightning.module.VAE"
    latent: int = 20
    encoder_hidden: list[int] = field(default_factory=lambda: [400])
    decoder_hidden: list[int] = field(default_factory=lambda: [400])
    activation: str = "relu"
    init_std: float | None = None
    n_samples: int = 1
    kl: str = "analytic"
    objective: str = "elbo"
    k: int = 1
    beta: float = 1.0
    kl_warmup_steps: int = 0
    compile: bool = False


ConfigStore.instance().store(group="model", name="vae_schema", node=VAEConfig)


def run_dir_of(ckpt_path: str | None, default: str, runs_root: str = "outputs") -> str:
    """The run directory a resumed run continues in: ``<run>`` for ``<run>/checkpoints/x.ckpt``;
    for ``last``, the newest run under ``runs_root`` that has a ``checkpoints/last.ckpt``;
    otherwise (a fresh run, or nothing to resume) ``default``."""
    if ckpt_path is None:
        return default
    if ckpt_path == "last":
        candidates = sorted(Path(runs_root).glob("*/*/checkpoints/last.ckpt"),
                            key=lambda p: p.stat().st_mtime)
        return str(candidates[-1].parent.parent) if candidates else default
    path = Path(ckpt_path)
    return str(path.parent.parent) if path.parent.name == "checkpoints" else default


OmegaConf.register_new_resolver("run_dir_of", run_dir_of, replace=True)


# Optional integrations: a target that needs a package outside the default install, the modules
# that provide it (any one will do) and the extra that installs them.
EXTRAS = {
    "lightning.pytorch.loggers.TensorBoardLogger": (("tensorboard", "tensorboardX"), "tensorboard"),
}


def _installed(module: str) -> bool:
    from importlib.util import find_spec

    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        return False


def _extra_problems(cfg: DictConfig) -> list[str]:
    """One line per chosen integration whose package is not installed, naming the extra."""
    problems = []
    for path, node in _target_nodes(cfg):
        modules, extra = EXTRAS.get(node._target_, ((), None))
        if modules and not any(map(_installed, modules)):
            problems.append(
                f"{path} ({node._target_}) needs the {modules[0]} package, which is not "
                f'installed: pip install "vae-lightning[{extra}]".'
            )
    return problems


def validate(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` listing every problem in ``cfg``; log a warning for a setting that
    works but whose numbers mean less than the user may think."""
    problems = (_range_problems(cfg) + _key_problems(cfg) + _combination_problems(cfg)
                + _extra_problems(cfg))
    if problems:
        raise ConfigError("Invalid configuration:\n  - " + "\n  - ".join(problems))
    if (cfg.likelihood._target_ == "vae_lightning.likelihoods.Bernoulli"
            and cfg.data.get("binarize", "none") == "none"):
        log.warning(
            "likelihood=bernoulli on grayscale pixels (data.binarize=none): the Bernoulli "
            "log-likelihood of non-binary data is not normalised, so the bound is not a log "
            "probability in nats. Use data.binarize=dynamic, or a likelihood for [0, 1] data "
            "such as likelihood=continuous_bernoulli."
        )


def _check(problems: list[str], ok: bool, key: str, value: Any, accepted: str) -> None:
    if not ok:
        problems.append(f"{key}={value!r} is not allowed: {accepted}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _range_problems(cfg: DictConfig) -> list[str]:
    from vae_lightning.nets import ACTIVATIONS  # here: importing this module stays torch-free

    m, p = cfg.model, []
    _check(p, _is_int(m.latent) and m.latent > 0, "model.latent", m.latent,
           "the latent size Nz must be a positive integer")
    for key in ("encoder_hidden", "decoder_hidden"):
        sizes = m[key]
        _check(p, isinstance(sizes, ListConfig) and all(_is_int(s) and s > 0 for s in sizes),
               f"model.{key}", OmegaConf.to_object(sizes) if isinstance(sizes, ListConfig)
               else sizes, "expected a list of positive layer sizes, e.g. [400] or [500, 500]")
    _check(p, m.activation in ACTIVATIONS, "model.activation", m.activation,
           f"accepted: {', '.join(sorted(ACTIVATIONS))}")
    _check(p, m.init_std is None or m.init_std > 0, "model.init_std", m.init_std,
           "expected null or a positive standard deviation")
    _check(p, m.n_samples >= 1, "model.n_samples", m.n_samples, "L must be at least 1")
    _check(p, m.k >= 1, "model.k", m.k, "the number of importance samples must be at least 1")
    _check(p, m.kl in ("analytic", "mc"), "model.kl", m.kl, "accepted: analytic, mc")
    _check(p, m.objective in ("elbo", "iwae"), "model.objective", m.objective,
           "accepted: elbo, iwae")
    _check(p, m.beta >= 0, "model.beta", m.beta, "the KL weight must be >= 0")
    _check(p, m.kl_warmup_steps >= 0, "model.kl_warmup_steps", m.kl_warmup_steps,
           "expected a number of steps >= 0")
    lr = cfg.optimizer.get("lr")
    _check(p, lr is None or (isinstance(lr, (int, float)) and lr > 0), "optimizer.lr", lr,
           "the learning rate must be a positive number")
    wd = cfg.optimizer.get("weight_decay", 0.0)
    _check(p, isinstance(wd, (int, float)) and wd >= 0, "optimizer.weight_decay", wd,
           "weight decay must be >= 0")
    fused = cfg.optimizer.get("fused")
    _check(p, fused in (None, True, False), "optimizer.fused", fused,
           "expected true (one fused kernel per step), false or null (PyTorch's default)")
    bs = cfg.data.get("batch_size")
    _check(p, _is_int(bs) and bs > 0, "data.batch_size", bs, "expected a positive integer")
    epochs = cfg.trainer.get("max_epochs")
    _check(p, epochs is None or (_is_int(epochs) and (epochs >= 1 or epochs == -1)),
           "trainer.max_epochs", epochs, "expected a positive integer, or -1 for no limit")
    samples = cfg.trainer.get("max_samples")
    _check(p, samples is None or (isinstance(samples, int | float) and not isinstance(samples, bool)
                                  and samples >= 1), "trainer.max_samples", samples,
           "expected null or a number of training samples >= 1, e.g. 1e7")
    steps = cfg.trainer.get("steps_per_batch", 1)
    _check(p, _is_int(steps) and steps >= 1, "trainer.steps_per_batch", steps,
           "expected a positive number of optimizer steps per training batch")
    _check(p, _is_int(cfg.seed), "seed", cfg.seed, "expected an integer")
    ckpt = cfg.get("ckpt_path")
    _check(p, ckpt in (None, "last") or os.path.isfile(str(ckpt)), "ckpt_path", ckpt,
           "expected null, 'last', or the path of an existing checkpoint file")
    return p


def _target_nodes(node: Any, path: str = "") -> list[tuple[str, DictConfig]]:
    """Every config node with a ``_target_``, with its dotted path (the hydra node excluded)."""
    if not isinstance(node, DictConfig):
        return []
    found = [(path, node)] if "_target_" in node else []
    for key in node:
        if path == "" and key == "hydra":
            continue
        child = node._get_node(key)
        found += _target_nodes(child, f"{path}.{key}" if path else str(key))
    return found


def _accepted_keys(obj: Any) -> list[str] | None:
    """The keyword arguments ``obj`` accepts, following ``**kwargs`` up a class's bases;
    ``None`` when it takes arbitrary keywords."""
    constructors = [c.__init__ for c in obj.__mro__ if "__init__" in vars(c)] if isinstance(
        obj, type) else [obj]
    names: list[str] = []
    for constructor in constructors:
        params = inspect.signature(constructor).parameters.values()
        names += [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return [n for n in dict.fromkeys(names) if n != "self"]
    return None


def _key_problems(cfg: DictConfig) -> list[str]:
    problems = []
    for path, node in _target_nodes(cfg):
        target = node._target_
        try:
            obj = get_object(target)
        except Exception:
            problems.append(f"{path}._target_={target!r} cannot be imported; check its spelling.")
            continue
        params = _accepted_keys(obj)
        if params is None:
            continue
        for key in node:
            if key not in HYDRA_KEYS | OWN_KEYS.get(path, set()) and key not in params:
                accepted = ", ".join(params)
                problems.append(
                    f"{path}.{key} is not an option of {target}; accepted keys: {accepted}."
                )
    return problems


def _combination_problems(cfg: DictConfig) -> list[str]:
    m, problems = cfg.model, []
    if m.kl == "analytic":
        for group in ("posterior", "prior"):
            try:
                has_kl = getattr(get_object(cfg[group]._target_), "has_analytic_kl", False)
            except Exception:
                continue  # reported by _key_problems
            if not has_kl:
                problems.append(
                    f"model.kl='analytic' needs a closed-form KL(q || p), and the {group} "
                    f"{cfg[group]._target_} has none; use model.kl=mc (the Monte-Carlo KL, "
                    "estimator A)."
                )
    steps = cfg.trainer.get("steps_per_batch", 1)
    for key, default in (("gradient_clip_val", None), ("accumulate_grad_batches", 1)):
        value = cfg.trainer.get(key, default)
        if _is_int(steps) and steps > 1 and value not in (default, 0 if default is None else 1):
            problems.append(
                f"trainer.{key}={value!r} cannot be combined with trainer.steps_per_batch="
                f"{steps}: its steps are taken by the model (manual optimization), which Lightning "
                f"does not clip or accumulate. Set trainer.steps_per_batch=1 or remove {key}."
            )
    if m.objective == "iwae" and (m.beta != 1.0 or m.kl_warmup_steps > 0):
        problems.append(
            f"model.beta={m.beta} / model.kl_warmup_steps={m.kl_warmup_steps} apply to "
            "objective=elbo only; the importance-weighted bound has no separate KL term."
        )
    if m.objective == "elbo" and m.k != 1:
        problems.append(
            f"model.k={m.k} is used only with model.objective=iwae; set model.objective=iwae "
            "or leave k=1 (use model.n_samples for L samples in the ELBO)."
        )
    if m.objective == "iwae" and m.n_samples != 1:
        problems.append(
            f"model.n_samples={m.n_samples} is for the ELBO; with objective=iwae set the number "
            "of importance samples with model.k."
        )
    return problems
