"""Identity classification losses of HA-CNN (paper Sec. 3.3).

Both streams are trained as identity classifiers with the softmax
cross-entropy (Sec. 3.3, "Model training")::

    L_ce = -1/n_bs * sum_i log( exp(W_{y_i}^T x_i) / sum_{k=1}^{n_id} exp(W_k^T x_i) )

where ``x_i`` is the 512-d global (or local) feature of image ``i``, ``W`` the
head's classifier and ``n_bs`` the batch size. The global and the local
branch each have their own classifier; the network is optimised on the sum

    L = L_ce(global) + L_ce(local)

so the local loss also reaches the global stream through the
cross-attention interaction (Sec. 3.2). With ``label_smoothing = eps`` the
one-hot target is replaced by ``(1 - eps) * onehot + eps / n_id`` (Szegedy et
al. 2016; torchreid's ``CrossEntropyLoss(label_smooth=True)`` uses eps=0.1),
an option the paper does not use.

``triplet_weight = w > 0`` adds, for each stream's embedding, the batch-hard
triplet loss of Hermans, Beyer & Leibe ("In Defense of the Triplet Loss for
Person Re-Identification", 2017, Eq. 5) on the L2-normalised features (the
distance evaluation ranks by)::

    L_tri = 1/n_bs * sum_a [ m + max_{p: y_p = y_a} d(a, p) - min_{n: y_n != y_a} d(a, n) ]_+

so ``L = L_ce(global) + L_ce(local) + w * (L_tri(global) + L_tri(local))``.
It needs P x K batches (K >= 2 images of each identity); the paper trains on
the cross-entropy alone (w = 0: ``TrainConfig(recipe="adam")``); the
package's default recipe, ``adam-triplet``, sets w = 1 (chosen by measurement,
``benchmarks/README.md``).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .model import HACNNOutput


class LossOutput(NamedTuple):
    """Total loss and its parts (detached parts are for logging)."""

    total: torch.Tensor                 # scalar, what ``backward`` is called on
    global_loss: torch.Tensor           # scalar
    local_loss: torch.Tensor | None     # scalar, None without a local branch


def identity_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                           label_smoothing: float = 0.0) -> torch.Tensor:
    """Softmax cross-entropy over identities (paper Sec. 3.3), computed in float32.

    ``logits``: (B, n_id); ``targets``: (B,) identity labels in ``0..n_id-1``.
    """
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def batch_hard_triplet(features: torch.Tensor, targets: torch.Tensor, margin: float = 0.3,
                       gather: Callable | None = None) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017, Eq. 5) on L2-normalised ``features``.

    ``features``: (B, D); ``targets``: (B,). Each anchor takes its farthest
    positive and nearest negative in the batch; anchors without a positive
    (another image of its identity) or without a negative are left out.

    ``gather`` (a multi-process run: :func:`hacnn.distributed.gather_batch`)
    maps this process's rows to ``(every process's rows, offset of these)``:
    the anchors stay this process's images and their positives and negatives
    are mined over the global batch, so that the mean over processes that
    DDP's gradient average makes is the one-process loss of that batch.
    """
    f = F.normalize(features.float(), dim=1)
    g, offset = (f, 0) if gather is None else gather(f)
    t = targets if gather is None else gather(targets)[0]
    dist = (2 - 2 * f @ g.T).clamp_min(1e-12).sqrt()                     # (B, N) Euclidean, 0 safe
    same = targets[:, None] == t[None, :]
    rows = torch.arange(len(f), device=f.device)
    other = same.clone()
    other[rows, rows + offset] = False                                    # positives, not the anchor
    hardest_pos = dist.masked_fill(~other, float("-inf")).amax(1)
    hardest_neg = dist.masked_fill(same, float("inf")).amin(1)
    valid = other.any(1) & (~same).any(1)
    if not valid.any():
        return dist.sum() * 0.0                                           # keeps the graph
    return F.relu(margin + hardest_pos[valid] - hardest_neg[valid]).mean()


class HACNNLoss(nn.Module):
    """``L = L_ce(global) + local_weight * L_ce(local)`` (paper Sec. 3.3), plus
    ``triplet_weight`` x the batch-hard triplet loss of each stream when > 0.

    ``local_weight`` is 1 in the paper; a model without a local branch
    (``HACNNConfig(local_branch=False)``) is trained on the global terms alone.
    ``global_loss`` / ``local_loss`` of the output are each stream's whole term.
    ``gather``: see :func:`batch_hard_triplet` (None: one process).
    """

    def __init__(self, label_smoothing: float = 0.0, local_weight: float = 1.0,
                 triplet_weight: float = 0.0, triplet_margin: float = 0.3, gather: Callable | None = None):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if triplet_weight < 0 or triplet_margin <= 0:
            raise ValueError(f"triplet_weight must be >= 0 and triplet_margin > 0, got "
                             f"{triplet_weight} and {triplet_margin}")
        self.label_smoothing = label_smoothing
        self.local_weight = local_weight
        self.triplet_weight, self.triplet_margin = triplet_weight, triplet_margin
        self.gather = gather          # multi-process runs: mine triplets over the global batch

    def _stream(self, logits: torch.Tensor, features: torch.Tensor | None, targets: torch.Tensor):
        loss = identity_cross_entropy(logits, targets, self.label_smoothing)
        if self.triplet_weight:
            if features is None:
                raise ValueError("triplet_weight > 0 needs the model's training-mode features")
            triplet = batch_hard_triplet(features, targets, self.triplet_margin, self.gather)
            loss = loss + self.triplet_weight * triplet
        return loss

    def forward(self, output: HACNNOutput, targets: torch.Tensor) -> LossOutput:
        g = self._stream(output.global_logits, output.global_features, targets)
        if output.local_logits is None:
            return LossOutput(g, g.detach(), None)
        l = self._stream(output.local_logits, output.local_features, targets)
        return LossOutput(g + self.local_weight * l, g.detach(), l.detach())

    def extra_repr(self) -> str:
        return (f"label_smoothing={self.label_smoothing}, local_weight={self.local_weight}, "
                f"triplet_weight={self.triplet_weight}, triplet_margin={self.triplet_margin}")
