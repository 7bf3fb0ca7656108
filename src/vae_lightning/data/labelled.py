"""Semi-supervised training data (Kingma, Rezende, Mohamed & Welling 2014): of the training
images, ``labelled`` keep their label, as many of each class, chosen by the data seed; every
training image is also served without its label (-1), so that each minibatch holds
``batch_size`` images of the whole training set, labels hidden, and ``labelled_batch`` of the
labelled ones with their labels, drawn for each minibatch from the minibatch's own indices (so a
resumed run draws the same). The validation and test splits keep all their labels: they measure
the classifier.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from vae_lightning.data.sampling import derive_seed

UNLABELLED = -1  # the label of an image whose label is hidden


def balanced_subset(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of ``n`` points of labels ``y``, n / K of each of the K classes present, chosen
    uniformly within each class by ``seed``; sorted. ``ValueError`` when K does not divide n or
    a class has fewer points, or there are no labels."""
    classes = torch.unique(y[y >= 0])
    if not len(classes):
        raise ValueError("the training images have no labels to keep")
    if n % len(classes):
        raise ValueError(f"{n} labelled images cannot be balanced over {len(classes)} classes: "
                         f"choose a multiple of {len(classes)}")
    per_class = n // len(classes)
    generator = torch.Generator().manual_seed(derive_seed(seed, 7))
    chosen = []
    for c in classes.tolist():
        members = (y == c).nonzero().flatten()
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} training images, fewer than the "
                             f"{per_class} per class that {n} labelled images need")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


class SemiSupervised(Dataset):
    """The training split ``(x, y)`` served as ``batch[idx]``: the images ``x[idx]`` with their
    labels hidden, followed by ``per_batch`` of the ``labelled`` points with their labels, drawn
    with replacement by a generator seeded from (``seed``, the minibatch's indices). A list of
    index tensors (``steps_per_batch``) gives the list of their minibatches."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, labelled: torch.Tensor,
                 per_batch: int, seed: int) -> None:
        self.x, self.y, self.per_batch, self.seed = x, y, per_batch, seed
        self.labelled = labelled.to(x.device)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx: torch.Tensor | list[torch.Tensor]):
        if isinstance(idx, list):
            return [self[i] for i in idx]
        idx = idx.to(self.x.device)
        key = derive_seed(self.seed, len(idx), int(idx[0]), int(idx.sum()))
        pick = torch.randint(len(self.labelled), (self.per_batch,),
                             generator=torch.Generator().manual_seed(key))
        chosen = self.labelled[pick.to(self.x.device)]
        hidden = torch.full((len(idx),), UNLABELLED, dtype=self.y.dtype, device=self.y.device)
        return (torch.cat([self.x.index_select(0, idx), self.x.index_select(0, chosen)]),
                torch.cat([hidden, self.y.index_select(0, chosen)]))
