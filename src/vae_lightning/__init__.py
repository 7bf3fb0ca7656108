"""vae-lightning: Auto-Encoding Variational Bayes with PyTorch Lightning and Hydra.

``from vae_lightning import VAE``; ``VAE.load_from_checkpoint(path)`` gives a trained model,
``load_datamodule(path)`` the data it was trained on, with the run's options.
"""

__version__ = "0.1.0"
__all__ = ["VAE", "load_datamodule"]


def __getattr__(name: str):
    # Lazily: importing the package (e.g. for the command-line configs) does not import torch.
    if name == "VAE":
        from vae_lightning.module import VAE

        return VAE
    if name == "load_datamodule":
        from vae_lightning.checkpoint_data import load_datamodule

        return load_datamodule
    raise AttributeError(f"module 'vae_lightning' has no attribute {name!r}")
