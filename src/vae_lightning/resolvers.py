"""OmegaConf resolvers used by the configs; importing this module registers them.

- ``${sweep_group:}``: under a Hydra multirun, the sweep directory (``hydra.sweep.dir``, e.g.
  ``multirun/2026-01-31/12-00-00``), shared by every job of the sweep; ``null`` otherwise. The W&B
  logger uses it as the run group, so the jobs of one sweep appear together.
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf


def sweep_group() -> str | None:
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    return str(hydra.sweep.dir) if hydra.mode == RunMode.MULTIRUN else None


if not OmegaConf.has_resolver("sweep_group"):
    OmegaConf.register_new_resolver("sweep_group", sweep_group)
