"""Train a VAE: `python train.py model.latent=2 data=frey` (the same as `vae-train`; README.md)."""

from vae_lightning.cli import train

if __name__ == "__main__":
    train()
