"""Parts of one's own that the framework builds as it builds its own: here a prior whose
constructor reads a tensor's value, which PyTorch's meta device (where every part is built first,
to count its parameters and to check a checkpoint's shapes) cannot give."""

import json

import torch
from test_hostile import TINY, no_traceback, run
from torch import distributions as D
from torch import nn

from vae_lightning import cli
from vae_lightning.priors import Prior


class ItemPrior(Prior):
    """N(0, diag(s^2)) with a learned log-scale started at log(init_scale), computed through a
    tensor (as a newcomer's prior did): ``float`` of a meta tensor raises."""

    features = frozenset({"factorized"})

    def __init__(self, latent: int, init_scale: float = 2.0) -> None:
        super().__init__(latent)
        start = float(torch.tensor(init_scale).log())
        self.log_scale = nn.Parameter(torch.full((latent,), start))

    def distribution(self):
        return D.Independent(D.Normal(torch.zeros_like(self.log_scale), self.log_scale.exp()), 1)


def test_a_part_that_reads_a_tensor_value_trains_and_is_evaluated(tmp_path, monkeypatch, capsys):
    """Training stopped before the first step with "Invalid configuration: model.prior:
    Tensor.item() cannot be called on meta tensors" (exit 2), a valid part refused; vae-eval's
    shape check of its checkpoint likewise. Such a part is now built on the CPU where the meta
    device cannot build it (rebuild.build_on_meta), and trains and evaluates as any."""
    run_dir = tmp_path / "run"
    result = run(cli.train, [*TINY, "data=frey", "trainer.max_steps=3",
                             "model.prior._target_=test_own_parts.ItemPrior",
                             f"hydra.run.dir={run_dir}"], monkeypatch, capsys, tmp_path)
    assert result.code == 0, result.err[-2000:]
    no_traceback(result)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert state["prior.log_scale"].shape == (2,)
    result = run(cli.evaluate, [f"ckpt_path={checkpoint}", "eval.k=3", "eval.limit=10",
                                "eval.trusted=[test_own_parts.ItemPrior]"],
                 monkeypatch, capsys, tmp_path)
    assert result.code == 0, result.err[-2000:]
    no_traceback(result)
    assert json.loads((run_dir / "eval.json").read_text())["n"] == 10
