"""The run's config printed as a tree when training starts (``callbacks=rich``)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from vae_lightning.checkpoints import RunConfig


class ConfigTree(L.Callback):
    """Prints the resolved run config (what the checkpoints store) with rich, rank 0 only."""

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from rich import print as rich_print
        from rich.tree import Tree

        config = RunConfig.of(trainer)
        if config is None:
            return
        tree = Tree("[bold]config")

        def add(branch: Tree, node: Any) -> None:
            for key, value in node.items():
                if isinstance(value, dict):
                    add(branch.add(f"[bold]{key}"), value)
                else:
                    branch.add(f"{key}: {value!r}")

        add(tree, config)
        rich_print(tree)
