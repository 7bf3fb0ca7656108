"""Train a VAE: `python train.py model.latent=2 data=frey` (see README.md and conf/)."""

import sys

import hydra
from omegaconf import DictConfig

from vae_lightning.config import ConfigError  # registers the config schemas; imports no torch


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    # Imported here, so that `--help`, `--cfg job` and `--info` answer without importing torch
    # and Lightning (about 3 s).
    from vae_lightning.data import DataError
    from vae_lightning.module import NonFiniteLossError
    from vae_lightning.train import train

    try:
        return train(cfg)["val/elbo"]
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(3) from None


if __name__ == "__main__":
    main()
