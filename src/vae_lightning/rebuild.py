"""Models rebuilt from a checkpoint: its run config builds only the classes this package's own
config groups name (and those a user passes as ``trusted``), so nothing in the file chooses what
code runs; the sizes that config asks for are checked against the saved weights on PyTorch's
meta device before any memory is taken, and the weights must fit the model built, which goes
onto the device a command names (``device_of``).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from vae_lightning.args import fail
from vae_lightning.checkpoints import USE_ANOTHER, read_checkpoint, run_config
from vae_lightning.errors import CheckpointError, UserError


@functools.cache
def shipped_targets(root: str) -> frozenset[str]:
    """Every ``_target_`` this package's configs name under ``root`` (``model`` or ``data``):
    in the files of that config group, and under the ``root`` key of the others (presets):
    what a checkpoint's ``root`` node may build. Per node, so that a checkpoint cannot put a
    class of another group where a model part goes (a data module there reads the files its
    path names)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("_target_"), str):
                found.add(node["_target_"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    def files(folder: Any) -> Iterable[Any]:
        for entry in folder.iterdir():
            if entry.is_dir():
                yield from files(entry)
            elif entry.name.endswith(".yaml"):
                yield entry

    conf = resources.files("vae_lightning.conf")
    group = conf.joinpath(root)
    for file in files(conf):
        node = OmegaConf.to_container(OmegaConf.create(file.read_text()))
        inside = str(file).startswith(str(group) + "/")
        walk(node if inside else node.get(root) if isinstance(node, dict) else None)
    return frozenset(found)


def _untrusted(node: Any, key: str, trusted: frozenset[str],
               names: set[str]) -> list[str]:
    """Why ``node`` (plain config from a checkpoint) must not be built: unknown targets and
    interpolations, each with its key; the unknown targets that are dotted Python names (those
    a user may pass as ``trusted``) are added to ``names``."""
    found = []
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not isinstance(target, str):
            found.append(f"{key}._target_ (a {type(target).__name__}, not a class name)")
        elif target is not None and target not in trusted:
            found.append(f"{key}._target_={target!r}")
            if all(part.isidentifier() for part in target.split(".")):
                names.add(target)
        for name, value in node.items():
            found += _untrusted(value, f"{key}.{name}", trusted, names)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _untrusted(value, f"{key}[{i}]", trusted, names)
    elif isinstance(node, str) and "${" in node:
        found.append(f"{key}={node!r} (an interpolation)")
    return found


def trusted_class(node: dict[str, Any], key: str, path: str | Path,
                  trusted: Sequence[str] = ()) -> Any:
    """The class (or function) the config ``node`` read from the checkpoint ``path`` names, if
    every target in it is one of this package's (or of ``trusted``); else refuse, naming them."""
    _refuse_untrusted(node, key, path, trusted)
    return get_object(node["_target_"])


def build_trusted(node: dict[str, Any], key: str, path: str | Path,
                  trusted: Sequence[str] = (), **kwargs: Any) -> Any:
    """Instantiate the config ``node`` read from the checkpoint ``path`` if every target it names
    is one of this package's (or of ``trusted``); else refuse, naming them."""
    _refuse_untrusted(node, key, path, trusted)
    try:
        return instantiate(OmegaConf.create(node), **kwargs)
    except Exception as err:
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, UserError):  # e.g. a DataError: its own message and exit code
            raise cause from None
        hint = (" (a module of your own must be importable here: put the folder that holds "
                "it on PYTHONPATH)"
                if isinstance(cause, ModuleNotFoundError) else "")
        raise CheckpointError(f"Checkpoint {path}: its {key} config cannot be built: "
                              f"{_reason(err)}{hint}.") from None


def _refuse_untrusted(node: Any, key: str, path: str | Path, trusted: Sequence[str]) -> None:
    known = shipped_targets(key.split(".")[0]) | frozenset(trusted)
    names: set[str] = set()
    refused = _untrusted(node, key, known, names)
    if not isinstance(node, dict) or "_target_" not in node:
        refused.insert(0, f"{key} without a _target_")
    if refused:
        listed = f"[{','.join(sorted(names))}]" if names else "[...]"
        strings = f"{sorted(names)}" if names else "[...]"  # Python's: the names quoted
        raise CheckpointError(
            f"Checkpoint {path} asks to build {', '.join(refused)}, which vae-lightning does not "
            "build: a checkpoint is untrusted input, so nothing in it chooses what code runs. "
            "Trusting a name runs that code when the file is loaded: a checkpoint you did not "
            "train that asks for code outside vae-lightning may be hostile, so do not trust it. "
            "Only if the checkpoint is yours and these are classes you wrote, pass their dotted "
            f"names as trusted: VAE.load_from_checkpoint(path, trusted={strings}) in Python, "
            f"eval.trusted={listed} with vae-eval, trusted={listed} with vae-sample and "
            f"vae-encode, {' '.join(f'--trusted {n}' for n in sorted(names)) or '--trusted ...'}"
            " with vae-export (their modules importable: on PYTHONPATH, as when it was "
            "trained).")


def _reason(err: BaseException) -> str:
    """What went wrong, from the innermost cause (Hydra wraps a constructor's error in a header
    line naming the target): every line of it, joined."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = [line.strip().rstrip(".") for line in str(err).strip().splitlines() if line.strip()]
    return "; ".join(lines[:6]) or type(err).__name__


def load_model(path: str | Path, model_class: type, map_location: Any = "cpu",
               trusted: Sequence[str] = ()):
    """``(model, run config, raw checkpoint)`` of a ``vae-train`` checkpoint: the model (an
    instance of ``model_class``, e.g. ``module.VAE``) rebuilt from the saved config with the
    saved weights, in eval mode.

    The config's sizes are untrusted too: the model is first built on PyTorch's meta device
    (nothing allocated) and its parameter shapes compared with the saved weights, so a config
    that asks for more than the weights hold is refused before any memory is taken; after
    loading, the data shape the model was built for must be the shape its networks read and
    write (``_check_data_shape``)."""
    checkpoint = read_checkpoint(path)
    config = run_config(checkpoint, path)
    check_sizes(config, checkpoint["state_dict"], path, trusted)
    model = build_trusted(config["model"], "model", path, trusted)
    if not isinstance(model, model_class):
        raise CheckpointError(f"Checkpoint {path}: its model config builds a "
                              f"{type(model).__name__}, not a {model_class.__name__}.")
    check_fit(model.state_dict(), checkpoint["state_dict"], path)
    model.load_state_dict(checkpoint["state_dict"])
    _check_data_shape(model, path)
    model.samples_seen = checkpoint.get("samples_seen", 0)
    if getattr(model, "classes", None) is not None:
        model.trained_on = trained_on(config)
    return model.to(map_location).eval(), config, checkpoint


def trained_on(config: dict[str, Any]) -> str | None:
    """The kind of y a conditional model was trained on, as its run config records it:
    ``"vectors"`` (``data.condition`` named an array of condition vectors), else ``"labels"``;
    None where the config has no data section (either kind is then taken)."""
    data = config.get("data")
    if not isinstance(data, dict):
        return None
    return "vectors" if data.get("condition") is not None else "labels"


# The model's parts that hold its sizes (an objective may own networks: FactorVAE's
# discriminator, M2's classifier).
PARTS = ("encoder", "decoder", "prior", "objective")


def build_on_meta(build: Callable[[], Any]) -> Any:
    """``build()`` on PyTorch's meta device, where nothing is allocated and tensors hold no
    values (a model's sizes are checked there before its memory is taken). A part whose
    constructor reads a tensor's value (``float(t)``, ``t.item()``, ``if t > 0:``, as a part of
    one's own may) cannot be built there; it stopped the run with "Invalid configuration: ...
    Tensor.item() cannot be called on meta tensors", a valid part refused. It is built on the CPU
    instead, as training builds it next: a build that fails there too raises its own error.
    PyTorch names the device "meta" or "Meta" (an operator with no meta kernel, such as
    ``torch.unique``: "attempted to run this operator with Meta tensors"): either is looked
    for."""
    try:
        with torch.device("meta"):
            return build()
    except UserError as err:
        if "meta" not in str(err).lower():
            raise
    return build()


def check_sizes(config: dict[str, Any], state: dict[str, torch.Tensor], path: str | Path,
                trusted: Sequence[str] = ()) -> None:
    """Build the model's parts from the checkpoint's config on PyTorch's meta device (nothing
    is allocated) and refuse sizes that do not match the saved weights: a config that asks for
    networks larger than its weights is refused before any memory is taken."""
    model = config.get("model")
    if not isinstance(model, dict):
        return
    # Every part's classes at once: refused part by part, a checkpoint of two classes of one's
    # own took two refused runs to learn the list to trust.
    _refuse_untrusted(model, "model", path, trusted)
    parts = {key: build_on_meta(lambda key=key: build_trusted(model[key], f"model.{key}", path,
                                                              trusted))
             for key in PARTS if isinstance(model.get(key), dict)}
    check_parts(parts, state, path)


def check_parts(parts: dict[str, torch.nn.Module], state: dict[str, torch.Tensor],
                path: str | Path) -> None:
    """``check_fit`` of the weights of the model's parts (``PARTS``, built on any device)."""
    own = {f"{key}.{name}": tensor for key, part in parts.items()
           if isinstance(part, torch.nn.Module) for name, tensor in part.state_dict().items()}
    check_fit(own, {k: v for k, v in state.items() if k.split(".")[0] in parts}, path)


def check_fit(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
              path: str | Path) -> None:
    """Refuse weights ``state`` that do not fit the model's ``own`` state (shapes and names), or
    whose type differs in kind (an integer or boolean tensor where the model holds real numbers:
    copied in, it would load silently), naming the keys and shapes."""
    for name, tensor in own.items():
        if name in state and tensor.is_floating_point() and not state[name].is_floating_point():
            raise CheckpointError(f"Checkpoint {path}: weight {name} is {state[name].dtype}, "
                                  f"where the model holds {tensor.dtype}. {USE_ANOTHER}")
    problems = [f"{name} has shape {list(state[name].shape)} in the file, "
                f"{list(tensor.shape)} in the model" for name, tensor in own.items()
                if name in state and state[name].shape != tensor.shape]
    missing = [name for name in own if name not in state]
    unexpected = [name for name in state if name not in own]
    if missing:
        problems.append(f"missing: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        problems.append(f"not in the model: {', '.join(unexpected[:5])}"
                        + (" ..." if len(unexpected) > 5 else ""))
    if problems:
        raise CheckpointError(f"Checkpoint {path}: its weights do not fit the model its config "
                              f"builds ({'; '.join(problems[:8])}). {USE_ANOTHER}")


CHECKED_IMAGE_SIZE = 2**24  # values in one image the data-shape check may allocate (64 MiB)


@torch.no_grad()
def _check_data_shape(model: torch.nn.Module, path: str | Path) -> None:
    """The model's ``data_shape`` (what bits/dim and evaluation read) must be what its encoder
    takes and its decoder gives: one image of that shape through both. The shape is the file's,
    and one image of a shape such as [1000, 1000, 1000] would take 4 GB before the check could
    refuse it, so the image goes first through a copy of the model on PyTorch's meta device
    (shapes only, nothing allocated); where a part cannot run there (some distributions' code
    reads values), through the model itself, only for an image of at most
    ``CHECKED_IMAGE_SIZE`` values (2^24, a 3 x 2048 x 2048 image: more than any built-in data set's,
    and a ``data=folder`` model of larger images is refused only if the meta device fails it)."""
    if model.data_shape is None:
        return
    shape = tuple(model.data_shape)
    event = _event_shape(copy.deepcopy(model).to("meta"), shape, "meta")
    if isinstance(event, str):  # the meta device could not run it
        if math.prod(shape) > CHECKED_IMAGE_SIZE:
            raise CheckpointError(
                f"Checkpoint {path}: its model.data_shape={list(shape)} does not pass through "
                f"its networks on PyTorch's meta device ({event}), and an image of "
                f"{math.prod(shape)} values is more than the check tries in memory "
                f"({CHECKED_IMAGE_SIZE}); the file is inconsistent, so nothing is computed from "
                f"it. {USE_ANOTHER}")
        event = _event_shape(model, shape, "cpu")
    if event != shape:
        raise CheckpointError(
            f"Checkpoint {path}: its model.data_shape={list(shape)} is not the shape of the "
            f"images its networks were built for (the decoder gives {event}); the file is "
            f"inconsistent, so nothing is computed from it. {USE_ANOTHER}")


def _event_shape(model: torch.nn.Module, shape: tuple[int, ...], device: str) -> tuple | str:
    """The event shape of the decoder's distribution at the encoder's location for one image of
    ``shape`` (zeros, class 0 for a conditional model), or the error it raised, in words."""
    try:
        with model.given(torch.zeros(1, dtype=torch.int64, device=device)):
            q = model.encoder(torch.zeros(1, *shape, device=device))
            return tuple(model.decoder(model.encoder.location(q)).event_shape)
    except (RuntimeError, ValueError, NotImplementedError) as err:
        return f"an error ({_reason(err)})"


def device_of(key: str, device: str, name: str = "device") -> torch.device:
    """The device a command's ``device`` option (or another argument, ``name``) names, where
    ``load_model`` puts the model: ``auto`` (CUDA when available), ``cpu``, ``cuda``,
    ``cuda:<index>``, ``mps``; refused, naming ``key``, when torch does not know it or this
    machine lacks it."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        found = torch.device(device)
    except (RuntimeError, ValueError):
        fail(key, name, device, "expected auto, cpu, cuda, cuda:<index> or mps")
    if found.type == "cuda" and not torch.cuda.is_available():
        fail(key, name, device, "CUDA is not available on this machine (or this torch is a "
             "CPU build); use auto or cpu")
    count = torch.cuda.device_count()
    if found.type == "cuda" and found.index is not None and found.index >= count:
        fail(key, name, device, f"this machine has {torch.cuda.device_count()} CUDA "
             "device(s)")
    if found.type == "mps" and not torch.backends.mps.is_available():
        fail(key, name, device, "MPS is not available on this machine; use auto or cpu")
    if found.type not in ("cpu", "cuda", "mps"):
        fail(key, name, device, "expected auto, cpu, cuda, cuda:<index> or mps")
    return found
