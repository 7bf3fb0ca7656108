"""Rezende & Mohamed's (2015) 2-d energy targets (their Table 1, Fig. 3): a posterior family fitted
to p(z) = exp(-U(z)) / Z by minimising KL(q || p) = E_q[log q(z) + U(z)] + log Z, a diagonal
Gaussian against a planar flow of length 32 (``posteriors.planar.Planar``, its parameters one
learnable vector instead of an encoder's output: the family's own code path).

    U1(z) = 1/2 ((|z| - 2) / 0.4)^2
            - log(exp(-1/2 ((z1 - 2) / 0.6)^2) + exp(-1/2 ((z1 + 2) / 0.6)^2))
    U2(z) = 1/2 ((z2 - w1(z)) / 0.4)^2
    U3(z) = -log(exp(-1/2 ((z2 - w1(z)) / 0.35)^2) + exp(-1/2 ((z2 - w1(z) + w2(z)) / 0.35)^2))
    U4(z) = -log(exp(-1/2 ((z2 - w1(z)) / 0.4)^2) + exp(-1/2 ((z2 - w1(z) + w3(z)) / 0.35)^2))
    w1 = sin(2 pi z1 / 4), w2 = 3 exp(-1/2 ((z1 - 1) / 0.6)^2), w3 = 3 sigmoid((z1 - 1) / 0.3).

U2 to U4 do not decay along z1 (exp(-U) is not normalisable); a soft wall 1/2 (z1 / 4)^8 (below
0.05 nats inside the paper's window |z1| < 3) keeps them on the paper's [-4, 4] window. log Z is
integrated on a grid, so the KLs reported are KLs, not bounds. Training: Adam, minibatches of
``--batch`` draws, ``--steps`` steps; for the flow, the weight of U annealed from 0.01 to 1 over
the first half (the paper anneals over 10,000 of its 500,000 steps). The Gaussian is fitted
without annealing: from the entropy-dominated start a broad Gaussian settles at U1's centre of
symmetry, a saddle far worse than the fit on one arc it reaches otherwise (so each family is
shown at its better fit). The KL of the fitted q is estimated from ``--eval`` fresh draws (with
its standard error).

    python benchmarks/flows_energy.py [--steps 2000] [--batch 128] [--out docs/flows_energy.png]

writes the figure (per target: the density, then each family's draws as a histogram, titled with
its KL) and prints the KLs.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import Tensor

from vae_lightning.parts import scored_sample
from vae_lightning.posteriors import Gaussian
from vae_lightning.posteriors.planar import Planar

WINDOW, GRID = 4.0, 801  # the figure's window, and the grid that integrates Z (on [-8, 8]^2)


def _w1(z: Tensor) -> Tensor:
    return torch.sin(2 * math.pi * z[..., 0] / 4)


def _wall(z: Tensor) -> Tensor:
    return 0.5 * (z[..., 0] / 4) ** 8


def _gauss(x: Tensor, scale: float) -> Tensor:
    return -0.5 * (x / scale) ** 2


def u1(z: Tensor) -> Tensor:
    ring = 0.5 * ((z.norm(dim=-1) - 2) / 0.4) ** 2
    return ring - torch.logaddexp(_gauss(z[..., 0] - 2, 0.6), _gauss(z[..., 0] + 2, 0.6))


def u2(z: Tensor) -> Tensor:
    return 0.5 * ((z[..., 1] - _w1(z)) / 0.4) ** 2 + _wall(z)


def u3(z: Tensor) -> Tensor:
    w2 = 3 * torch.exp(_gauss(z[..., 0] - 1, 0.6))
    d = z[..., 1] - _w1(z)
    return -torch.logaddexp(_gauss(d, 0.35), _gauss(d + w2, 0.35)) + _wall(z)


def u4(z: Tensor) -> Tensor:
    w3 = 3 * torch.sigmoid((z[..., 0] - 1) / 0.3)
    d = z[..., 1] - _w1(z)
    return -torch.logaddexp(_gauss(d, 0.4), _gauss(d + w3, 0.35)) + _wall(z)


TARGETS = {"U1": u1, "U2": u2, "U3": u3, "U4": u4}


def log_z(energy) -> float:
    """log of the integral of exp(-U) on a grid over [-8, 8]^2 (the mass outside is nil)."""
    axis = torch.linspace(-8, 8, GRID, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1)
    cell = (axis[1] - axis[0]) ** 2
    return (torch.logsumexp(-energy(z).flatten(), 0) + cell.log()).item()


def family(name: str):
    return Gaussian() if name == "gaussian" else Planar(length=32)


def fit(name: str, energy, steps: int = 2000, batch: int = 128, lr: float = 5e-3,
        seed: int = 0) -> Tensor:
    """The parameters of ``name`` (``gaussian`` or ``planar``) fitted to exp(-``energy``): the
    base starts at N(m, I) with m ~ N(0, 0.5^2 I) (the same for both families: off the targets'
    centre of symmetry, where the mean's gradient vanishes), the maps' parameters at
    N(0, 0.5^2); the weight of U annealed for the flow only (see the module)."""
    torch.manual_seed(seed)
    q_family = family(name)
    g = torch.Generator().manual_seed(seed)
    base = torch.cat([0.5 * torch.randn(2, generator=g), torch.zeros(2)])
    maps = 0.5 * torch.randn(q_family.n_params(2) - 4, generator=g)
    params = torch.cat([base, maps])[None].requires_grad_()
    optimizer = torch.optim.Adam([params], lr=lr)
    for step in range(steps):
        beta = min(1.0, 0.01 + step / (steps / 2)) if name != "gaussian" else 1.0
        z, log_q = scored_sample(q_family(params), (batch,))
        loss = (log_q + beta * energy(z)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return params.detach()


def kl(name: str, params: Tensor, energy, draws: int = 50000, seed: int = 1
       ) -> tuple[float, float, Tensor]:
    """KL(q || p) of the fitted q from ``draws`` fresh draws, its standard error, and the
    draws."""
    torch.manual_seed(seed)
    with torch.no_grad():
        z, log_q = scored_sample(family(name)(params), (draws,))
        terms = (log_q + energy(z)).flatten().double()
    value = terms.mean().item() + log_z(energy)
    return value, terms.std().item() / math.sqrt(draws), z.reshape(-1, 2)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--eval", type=int, default=50000)
    parser.add_argument("--out", type=Path, default=Path("docs/flows_energy.png"))
    args = parser.parse_args(argv)
    from vae_lightning.plotting import pyplot

    torch.set_num_threads(1)  # tiny tensors: a parallel region costs more than the work
    plt = pyplot()
    names = ("gaussian", "planar")
    fig, axes = plt.subplots(len(TARGETS), 1 + len(names), figsize=(9, 12))
    axis = torch.linspace(-WINDOW, WINDOW, 200)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1)
    found: dict[str, dict[str, float]] = {}
    for row, (target, energy) in enumerate(TARGETS.items()):
        axes[row, 0].imshow(torch.exp(-energy(grid)).T, origin="lower", cmap="viridis",
                            extent=[-WINDOW, WINDOW, -WINDOW, WINDOW])
        axes[row, 0].set_title(f"{target}: exp(-U)")
        for col, name in enumerate(names, start=1):
            value, se, z = kl(name, fit(name, energy, args.steps, args.batch), energy, args.eval)
            found.setdefault(target, {})[name] = value
            print(f"{target} {name:>8}: KL(q || p) = {value:.4f} +- {se:.4f} nats")
            axes[row, col].hist2d(z[:, 0].numpy(), z[:, 1].numpy(), bins=100,
                                  range=[[-WINDOW, WINDOW], [-WINDOW, WINDOW]], cmap="viridis")
            label = "diagonal Gaussian" if name == "gaussian" else "planar, K = 32"
            axes[row, col].set_title(f"{label}: KL = {value:.3f}")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"q fitted to exp(-U) / Z by minimising KL(q || p) ({args.steps} Adam steps "
                 f"of {args.batch} draws)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    plt.close(fig)
    print(f"written: {args.out}")
    return found


if __name__ == "__main__":
    main()
