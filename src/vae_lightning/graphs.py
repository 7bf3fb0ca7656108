"""A training step with no host-device synchronisation, captured as a CUDA graph
(``model.cuda_graph=true``).

A small VAE's step on a GPU is a few dozen tiny kernels: the time goes to launching them from
Python, not to computing. ``GraphedStep`` writes the step's gradient (the objective's loss and
the backward pass) as a fixed sequence of operations on static tensors: the minibatch is copied
into a static input, and the loss, the bound's terms, the gradients and a non-finite flag land in
static outputs. On CUDA the sequence is captured once per minibatch shape as a CUDA graph and
each step replays it (one launch); elsewhere it runs eagerly, which is how the CPU tests check it
against the standard step. The update is the optimizer's, taken through Lightning
(``optimizer.step()``), so its hooks and step counts stay as they are.

Nothing in it reads a value back to the host. A non-finite loss sets a flag on the device, and
the flag is the fused optimizer's ``found_inf``, which skips the update (where torch has no fused
kernel, as for Adagrad on CUDA, the gradients are overwritten on the device by the gradient that
cancels the weight decay: ``zero_gradient_stays``): from the first bad step on, the parameters
stay as they were before it, and the model reads the flag back only every
``log_every_n_steps`` steps and at the end of an epoch (``VAE``), then stops as it would have.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from vae_lightning.parts import Bound, Parts


class Trained(Parts, Protocol):
    """What the graphed step uses of a model: its parts, its parameters and the objective that
    gives the loss."""

    objective: object

    def parameters(self): ...


def graph_problems(model: Trained, optimizer: torch.optim.Optimizer) -> list[str]:
    """Why ``model`` cannot take its steps this way, if it cannot."""
    found = []
    if not optimizer.defaults.get("fused") and not zero_gradient_stays(optimizer):
        found.append(f"{type(optimizer).__name__} is not fused (model.optimizer.fused=true): "
                     "the step needs an update that skips a non-finite step on the device: the "
                     "fused one, or Adagrad or SGD without momentum, which a gradient that "
                     "cancels their weight decay leaves where they are")
    if model.objective.step_dependent:
        found.append("the objective's loss changes with the step (a KL schedule or warm-up, a "
                     "capacity ramp), and a captured step is the same every time "
                     "(model.objective.kl_schedule=null, warmup_steps=0)")
    if reason := getattr(model.encoder.posterior, "uncapturable", None):
        found.append(reason)
    if getattr(model, "auxiliary", ()):
        found.append("the objective updates parameters of its own after each step (e.g. a "
                     "discriminator), outside the captured step")
    return found


def zero_gradient_stays(optimizer: torch.optim.Optimizer) -> bool:
    """Whether a gradient of -weight_decay * theta (0 without weight decay) leaves every
    parameter theta where it is: it cancels the decay term, so the update sees a zero
    gradient. So for Adagrad (its sum of squares gains 0, its step is 0 / (sqrt(sum) + eps)) and
    SGD without momentum, neither maximizing. The graphed step skips a non-finite step of such an
    optimizer, where torch has no fused kernel for it (Adagrad on CUDA), by writing that
    gradient on the device (exact without weight decay; with it, to the rounding of
    g + wd * theta)."""
    groups = optimizer.param_groups
    if type(optimizer) is torch.optim.Adagrad:
        return not any(group["maximize"] for group in groups)
    if type(optimizer) is torch.optim.SGD:
        return all(group["momentum"] == 0 and not group["maximize"] for group in groups)
    return False


def runtime_problems(trainer) -> list[str]:
    """Why the run's trainer cannot take graphed steps, if it cannot."""
    found = []
    if trainer.world_size > 1:
        found.append("DDP's gradient all-reduce inside a captured backward is not supported: "
                     "one device (trainer.devices=1)")
    if str(trainer.precision).startswith("16"):
        found.append("16-mixed scales the loss by a GradScaler outside the step: use "
                     "bf16-mixed or 32-true")
    return found


class GraphedStep:
    """The loss and gradients of one step of ``model`` on static tensors, for ``optimizer`` (its
    fused ``torch.optim`` optimizer, whose ``found_inf`` becomes the non-finite flag);
    ``capture`` (default: on CUDA) records it as a CUDA graph per minibatch shape."""

    def __init__(self, model: Trained, optimizer: torch.optim.Optimizer,
                 capture: bool | None = None) -> None:
        problems = graph_problems(model, optimizer)
        if problems:
            raise ValueError("model.cuda_graph=true cannot be used: " + "; ".join(problems) + ".")
        self.model, self.optimizer = model, optimizer
        device = next(model.parameters()).device
        self.capture = device.type == "cuda" if capture is None else capture
        self.bad = torch.zeros((), device=device)  # 1 from the first non-finite loss on
        self._params = [p for group in optimizer.param_groups for p in group["params"]]
        # Under the unfused optimizer (zero_gradient_stays) a non-finite step takes a zero step:
        # each parameter's -weight_decay, so that the decayed update is zero; the fused one skips
        # the update itself while found_inf is set.
        self.decays: list[float] | None = None
        if optimizer.defaults.get("fused"):
            self.optimizer.found_inf = self.bad
        else:
            self.decays = [-group["weight_decay"] for group in optimizer.param_groups
                           for _ in group["params"]]
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, Tensor, tuple, list]] = {}
        self._current: tuple[int, ...] | None = None  # the shape whose graph .grad points at

    def _gradient(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The operations: the loss, its gradients (written, not accumulated: the gradients are
        None before it), the flag."""
        loss, bound = self.model.objective.loss(self.model, x)
        loss.backward()
        self.bad.logical_or_(~torch.isfinite(loss))  # in place: the optimizer reads it
        if self.decays is not None:
            bad = self.bad.bool()
            for p, minus_decay in zip(self._params, self.decays):
                if p.grad is None:
                    continue
                if minus_decay:
                    p.grad.copy_(torch.where(bad, p.detach() * minus_decay, p.grad))
                else:
                    p.grad.masked_fill_(bad, 0.0)
        return loss.detach(), bound.recon.detach(), bound.kl.detach()

    def __call__(self, x: Tensor) -> tuple[Tensor, Bound]:
        """The loss, the bound's terms and (in the parameters' ``.grad``) the gradients of one
        step on the minibatch ``x``; static tensors when captured: use them before the next
        call. The caller takes the optimizer's step."""
        if not self.capture:
            self.optimizer.zero_grad(set_to_none=True)
            loss, recon, kl = self._gradient(x)
            return loss, Bound(recon, kl)
        key = tuple(x.shape)
        if key not in self._graphs:
            self._graphs[key] = self._record(x)
            self._current = key
        graph, static_x, (loss, recon, kl), grads = self._graphs[key]
        static_x.copy_(x)
        graph.replay()
        if key != self._current:
            # Each graph writes the gradients into tensors of its own (its capture allocated
            # them): after another shape's graph (an epoch's last, smaller minibatch), point the
            # parameters' .grad back at this graph's, or the optimizer would take the other
            # graph's stale gradient.
            for p, g in zip(self._params, grads):
                p.grad = g
            self._current = key
        return loss, Bound(recon, kl)

    def _record(self, x: Tensor):
        """Capture the step's gradient for minibatches shaped like ``x``. The warm-up that
        capturing needs (a few eager passes on a side stream) changes no parameter; the random
        state it used is put back."""
        saved = (self.bad.clone(), torch.cuda.get_rng_state(x.device))
        static_x = x.detach().clone()
        stream = torch.cuda.Stream(x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                self.optimizer.zero_grad(set_to_none=True)
                self._gradient(static_x)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        self.bad.copy_(saved[0])
        torch.cuda.set_rng_state(saved[1], x.device)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates them
        with torch.cuda.graph(graph):
            outputs = self._gradient(static_x)
        return graph, static_x, outputs, [p.grad for p in self._params]

    def last_bound(self) -> Bound:
        """The bound of the last captured step (its static outputs; zeros before any)."""
        if not self._graphs:
            return Bound(torch.zeros(1), torch.zeros(1))
        _, _, (_, recon, kl), _ = self._graphs[self._current]
        return Bound(recon, kl)

    def non_finite(self) -> bool:
        """Whether a loss was non-finite since the start (one read from the device)."""
        return bool(self.bad.item())
