"""vae-lightning: Auto-Encoding Variational Bayes with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
