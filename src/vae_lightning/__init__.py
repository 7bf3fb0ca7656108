"""vae-lightning: Auto-Encoding Variational Bayes with PyTorch Lightning and Hydra.

``from vae_lightning import VAE``; ``VAE.load_from_checkpoint(path)`` gives a trained model.
"""

__version__ = "0.1.0"
__all__ = ["VAE"]


def __getattr__(name: str):
    # Lazily: importing the package (e.g. for the command-line configs) does not import torch.
    if name == "VAE":
        from vae_lightning.module import VAE

        return VAE
    raise AttributeError(f"module 'vae_lightning' has no attribute {name!r}")
