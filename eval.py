"""Evaluate a checkpoint: `python eval.py ckpt_path=<run>/checkpoints/last.ckpt [eval.k=5000]`
(the same as `vae-eval`): the ELBO and the importance-weighted estimate of log p(x), into
eval.json. See README.md."""

from vae_lightning.cli import evaluate

if __name__ == "__main__":
    evaluate()
