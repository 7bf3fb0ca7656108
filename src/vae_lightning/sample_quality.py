"""Sample quality: how close the model's images are to real ones, in a feature space.

- FID (Heusel et al. 2017): the Frechet distance between Gaussians fitted to the real and the
  generated features, ||m_r - m_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) (torchmetrics'
  ``FrechetInceptionDistance``);
- KID (Binkowski et al. 2018): the unbiased squared MMD with the cubic polynomial kernel
  (x.y / d + 1)^3, averaged over random subsets (torchmetrics' ``KernelInceptionDistance``);
- precision and recall (Kynkaenniemi et al. 2019): the share of generated features inside the
  real manifold (the union of balls around each real feature, of radius its distance to its
  k-th nearest real neighbour), and of real features inside the generated manifold.

The features are computed once per image set and handed to torchmetrics' metrics as they are.
The default feature space exists offline: the penultimate layer of a small classifier the
project trains on the data set's labels (``FeatureNet``, ``scripts/train_feature_classifier.py``,
its weights kept under the data root, never in the repository). Inception-v3 features, the
published FID's, need torch-fidelity and its weights file (``inception_features``).
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vae_lightning.errors import ConfigError, DataError
from vae_lightning.files import atomic_write, kind, open_regular
from vae_lightning.samplers import _check_tensors

CLASSIFIERS = "feature_classifiers"  # the folder of the classifiers' weights under the data root
FORMAT = "vae-lightning feature classifier"
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
LARGEST = 4096  # the widest network a weights file may ask for (an untrusted file sizes nothing)


class FeatureNet(nn.Module):
    """A small convolutional classifier for images ``shape`` = [C, H, W] in [0, 1]: two 3x3
    convolutions (``width`` and 2 ``width`` channels, each followed by ReLU and 2x2 max
    pooling), average pooling to 4x4, a ReLU layer of ``num_features`` units (the features) and
    a linear layer to the ``classes`` logits."""

    def __init__(self, shape: Sequence[int], classes: int, width: int = 32,
                 num_features: int = 128) -> None:
        super().__init__()
        self.shape, self.classes = tuple(int(s) for s in shape), classes
        self.width, self.num_features = width, num_features
        self.body = nn.Sequential(
            nn.Conv2d(self.shape[0], width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(2 * width * 16, num_features), nn.ReLU())
        self.head = nn.Linear(num_features, classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    def settings(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "classes": self.classes, "width": self.width,
                "num_features": self.num_features}


def train_classifier(x: Tensor, y: Tensor, epochs: int = 3, batch_size: int = 128,
                     lr: float = 1e-3, seed: int = 0, width: int = 32, num_features: int = 128,
                     log: Callable[[str], None] | None = None) -> FeatureNet:
    """A ``FeatureNet`` trained on images ``x`` ``[N, C, H, W]`` in [0, 1] and labels ``y``
    (0..classes-1) by Adam on the cross-entropy, ``epochs`` passes in a seeded order."""
    torch.manual_seed(seed)
    net = FeatureNet(x.shape[1:], int(y.max()) + 1, width, num_features)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        net.train()
        total = 0.0
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: training cross-entropy {total / len(x):.4f}")
    return net.eval()


@torch.no_grad()
def accuracy(net: FeatureNet, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """The share of ``x`` whose most probable class is its label ``y``."""
    net.eval()
    right = sum(int((net(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                for i in range(0, len(x), batch_size))
    return right / len(x)


def classifier_path(root: str | os.PathLike, data: str) -> Path:
    """Where the feature classifier of the data set ``data`` is kept under the data ``root``."""
    return Path(root) / CLASSIFIERS / f"{data}.pt"


def save_classifier(path: str | os.PathLike, net: FeatureNet, **record: Any) -> None:
    """Write ``net``'s weights and settings, with ``record`` (data set, test accuracy, ...),
    atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as file:
        torch.save({"format": FORMAT, **net.settings(), "state_dict": net.state_dict(), **record},
                   file)


# The data sets scripts/train_feature_classifier.py trains a classifier for (its --data).
SCRIPT_DATA = ("mnist", "fashion_mnist")


def how_to_make(key: str, data: str | None = None, root: str | os.PathLike | None = None) -> str:
    """How to make the classifier of data set ``data`` (root: its data root), in words: the
    script's command for the data sets it trains on, else a classifier of one's own."""
    if data is None or root is None:
        return (f"train one with: python scripts/train_feature_classifier.py --data <data> (it "
                f"writes <data root>/{CLASSIFIERS}/<data>.pt), or name one with {key}=<file>")
    if data in SCRIPT_DATA:
        return (f"train one with: python scripts/train_feature_classifier.py --data {data} "
                f"--root {root} (in a checkout of the repository; it writes "
                f"{classifier_path(root, data)}), or name one with {key}=<file>")
    return (f"scripts/train_feature_classifier.py trains one for {', '.join(SCRIPT_DATA)} "
            f"only: for data={data} name a classifier of your own with {key}=<file> (written by "
            "sample_quality.save_classifier), or leave eval.sample_quality out")


def load_classifier(path: str | os.PathLike, shape: Sequence[int], key: str,
                    data: str | None = None,
                    root: str | os.PathLike | None = None) -> tuple[FeatureNet, dict[str, Any]]:
    """The classifier of ``path`` (read with ``weights_only``) and its record, checked: made
    by ``save_classifier``, for images of ``shape``; else a ``DataError`` naming the file (the
    config ``key`` that names it, and how to make one for the data set ``data`` of the data
    root ``root``: ``how_to_make``)."""
    how = how_to_make(key, data, root)
    if kind(path) in ("missing", "a dangling symbolic link"):
        raise ConfigError(f"{key}: no feature classifier at {path} ({kind(path)}): {how}.")
    with open_regular(path, DataError, "a feature classifier (.pt) file") as file:
        try:
            saved = torch.load(file, map_location="cpu", weights_only=True)
        except Exception:
            saved = None
    sizes = ("classes", "width", "num_features")
    if (not isinstance(saved, dict) or saved.get("format") != FORMAT
            or not all(isinstance(saved.get(k), int) and 0 < saved[k] <= LARGEST for k in sizes)
            or not isinstance(saved.get("state_dict"), dict)):
        raise DataError(f"{path} is not a feature classifier written by vae-lightning (corrupt, "
                        f"or another file): {how}.")
    if saved.get("shape") != list(shape):
        raise DataError(f"{path} is a feature classifier for images {saved.get('shape')}, not "
                        f"the model's {list(shape)}: {how}.")
    sizes = (shape, saved["classes"], saved["width"], saved["num_features"])
    with torch.device("meta"):  # the shapes its settings give, nothing allocated: a file of a
        sized = FeatureNet(*sizes)  # few bytes asking for width 4096 allocated 3.5 GB first
    try:
        _check_tensors(saved["state_dict"],
                       {name: tuple(t.shape) for name, t in sized.state_dict().items()})
    except ValueError as err:
        raise DataError(f"{path}: its weights do not fit the network its settings describe "
                        f"({err}; corrupt): {how}.") from None
    net = FeatureNet(*sizes)
    net.load_state_dict(saved["state_dict"])
    record = {k: v for k, v in saved.items() if k not in ("state_dict", "format")}
    return net.eval(), record


class _Uint8RGB(nn.Module):
    """Images in [0, 1] as the uint8 RGB images torch-fidelity's Inception-v3 reads."""

    def __init__(self, inception: nn.Module) -> None:
        super().__init__()
        self.inception, self.num_features = inception, 2048

    def features(self, x: Tensor) -> Tensor:
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        return self.inception(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)


def inception_features(weights: str | None, key: str) -> nn.Module:
    """Inception-v3's 2048 pool features (torch-fidelity's network in torchmetrics) from the
    weights file ``weights``; a ``ConfigError`` saying what to install or download when the
    package or the file is missing (nothing is downloaded)."""
    need = (f"the published FID's Inception-v3 needs the torch-fidelity package (pip install "
            f"torch-fidelity) and its weights file, downloaded from {INCEPTION_URL} and named "
            f"with {key}=<file>; or use the offline features, eval.features=classifier")
    if importlib.util.find_spec("torch_fidelity") is None:
        raise ConfigError(f"eval.features=inception: torch-fidelity is not installed: {need}.")
    if weights is None or kind(weights) is not None:
        found = "not given" if weights is None else f"{weights} is {kind(weights)}"
        raise ConfigError(f"eval.features=inception: the weights file is {found}: {need}.")
    from torchmetrics.image.fid import NoTrainInceptionV3

    return _Uint8RGB(NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                        feature_extractor_weights_path=str(weights)))


@torch.no_grad()
def features(net: nn.Module, images: Tensor, batch_size: int = 500,
             device: torch.device | str = "cpu") -> Tensor:
    """``net.features`` of ``images`` ``[N, C, H, W]`` (clamped to [0, 1], the real images'
    range), float64 ``[N, F]`` on the CPU."""
    net.to(device).eval()
    return torch.cat([net.features(images[i:i + batch_size].to(device).float().clamp(0, 1))
                      .double().cpu() for i in range(0, len(images), batch_size)])


class _Given(nn.Module):
    """Features handed to torchmetrics' metrics as they are (computed once, by ``features``)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


def fid(real: Tensor, fake: Tensor) -> float:
    """The Frechet distance of real and generated features ``[N, F]`` (torchmetrics)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Given(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """KID's mean and standard deviation over ``subsets`` random subsets of ``subset_size``
    (at most the smaller set's size) of real and generated features (torchmetrics)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():  # its notice that it keeps the features: they are given
        warnings.filterwarnings("ignore", "Metric `Kernel Inception Distance` will save")
        metric = KernelInceptionDistance(feature=_Given(real.shape[1]), subsets=subsets,
                                         subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng():  # the subsets are torch.randperm draws
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def kth_neighbour_distance(x: Tensor, k: int, chunk: int = 1000) -> Tensor:
    """Each row's Euclidean distance to its k-th nearest other row of ``x``."""
    return torch.cat([torch.cdist(x[i:i + chunk], x).topk(k + 1, largest=False).values[:, k]
                      for i in range(0, len(x), chunk)])


def coverage(points: Tensor, centres: Tensor, radii: Tensor, chunk: int = 1000) -> float:
    """The share of ``points`` inside at least one ball (``centres``, ``radii``)."""
    inside = [(torch.cdist(points[i:i + chunk], centres) <= radii).any(1)
              for i in range(0, len(points), chunk)]
    return float(torch.cat(inside).double().mean())


def check_neighbours(real: int, fake: int, k: int) -> None:
    """Refuse precision and recall of sets too small for a k-th neighbour (``ConfigError``)."""
    if min(real, fake) <= k:
        raise ConfigError(f"eval.nearest_k={k}: precision and recall need more than k real and "
                          f"generated images (there are {real} and {fake}); raise eval.samples "
                          "(or evaluate a larger split) or lower eval.nearest_k.")


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019) of generated features ``fake``
    against ``real``, each manifold the union of balls reaching each point's k-th neighbour."""
    check_neighbours(len(real), len(fake), k)
    precision = coverage(fake, real, kth_neighbour_distance(real, k))
    recall = coverage(real, fake, kth_neighbour_distance(fake, k))
    return precision, recall


@torch.no_grad()
def generate(model: Any, n: int, mean: bool, chunk: int = 1000) -> Tensor:
    """``n`` images of ``model`` on the CPU: E[x|z] (``mean``) or x ~ p(x|z), z ~ p(z)."""
    return torch.cat([model.sample(min(chunk, n - i), mean=mean).float().cpu()
                      for i in range(0, n, chunk)])


SCORES = ("fid", "kid", "precision", "recall")  # the scores an evaluation may hold


def scores(kinds: Sequence[str], real: Tensor, fake: Tensor, kid_subsets: int = 100,
           kid_subset_size: int = 1000, nearest_k: int = 3, seed: int = 0) -> dict[str, Any]:
    """The sample-quality scores of ``kinds`` (fid, kid, precision_recall) from real and
    generated features."""
    found: dict[str, Any] = {}
    if "fid" in kinds:
        found["fid"] = fid(real, fake)
    if "kid" in kinds:
        mean, std = kid(real, fake, kid_subsets, kid_subset_size, seed)
        found["kid"] = {"mean": mean, "std": std,
                        "subset_size": min(kid_subset_size, len(real), len(fake)),
                        "subsets": kid_subsets}
    if "precision_recall" in kinds:
        found["precision"], found["recall"] = precision_recall(real, fake, nearest_k)
        found["nearest_k"] = nearest_k
    return {key: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for key, v in found.items()}
