"""Evaluate a checkpoint: `python eval.py ckpt_path=<run>/checkpoints/last.ckpt [eval.k=5000]`.

Rebuilds the model and data from the run config saved in the checkpoint and writes eval.json
(the ELBO and the importance-weighted estimate of log p(x)); see README.md and conf/eval.yaml.
"""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

import vae_lightning.config  # noqa: F401  (registers the config schemas; imports no torch)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float:
    from vae_lightning.evaluate import run_eval  # here: `--help` and `--cfg` need no torch

    if OmegaConf.is_missing(cfg, "ckpt_path"):
        print("error: ckpt_path is required, e.g. python eval.py ckpt_path=<run>/checkpoints/"
              "last.ckpt", file=sys.stderr)
        raise SystemExit(2)
    try:
        results = run_eval(cfg)
    except ValueError as err:  # CheckpointError, ConfigError and bad eval.* options
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    for name in ("elbo", "iw"):
        est = results[name]
        print(f"{results['split']} {name:>4}: {est['nats']:.3f} +- {est['nats_se']:.3f} nats, "
              f"{est['bits_per_dim']:.4f} +- {est['bits_per_dim_se']:.4f} bits/dim")
    print(f"(k={results['k']}, n={results['n']}) written to {results['path']}")
    return results["iw"]["nats"]


if __name__ == "__main__":
    main()
