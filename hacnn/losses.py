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
"""
from __future__ import annotations

from typing import NamedTuple

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


class HACNNLoss(nn.Module):
    """``L = L_ce(global) + local_weight * L_ce(local)`` (paper Sec. 3.3).

    ``local_weight`` is 1 in the paper; a model without a local branch
    (``HACNNConfig(local_branch=False)``) is trained on the global term alone.
    """

    def __init__(self, label_smoothing: float = 0.0, local_weight: float = 1.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.local_weight = local_weight

    def forward(self, output: HACNNOutput, targets: torch.Tensor) -> LossOutput:
        g = identity_cross_entropy(output.global_logits, targets, self.label_smoothing)
        if output.local_logits is None:
            return LossOutput(g, g.detach(), None)
        l = identity_cross_entropy(output.local_logits, targets, self.label_smoothing)
        return LossOutput(g + self.local_weight * l, g.detach(), l.detach())

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, local_weight={self.local_weight}"
