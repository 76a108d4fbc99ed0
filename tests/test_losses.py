"""hacnn.losses against hand-computed values (paper Sec. 3.3)."""
import math

import pytest
import torch

from hacnn import HACNN
from hacnn.losses import HACNNLoss, LossOutput, identity_cross_entropy
from hacnn.model import HACNNOutput


def _out(global_logits, local_logits):
    g = torch.tensor(global_logits)
    l = None if local_logits is None else torch.tensor(local_logits)
    return HACNNOutput(g, l, torch.zeros(len(g), 4), None if l is None else torch.zeros(len(g), 4))


# Logits [0, ln 2, ln 5] -> softmax [1/8, 2/8, 5/8] exactly.
LN2, LN5 = math.log(2.0), math.log(5.0)


def test_cross_entropy_hand_computed():
    logits = torch.tensor([[0.0, LN2, LN5], [LN5, 0.0, LN2]])
    targets = torch.tensor([2, 1])
    # sample 0: -log(5/8); sample 1 (softmax [5/8, 1/8, 2/8]): -log(1/8)
    expected = (-math.log(5 / 8) - math.log(1 / 8)) / 2
    assert identity_cross_entropy(logits, targets).item() == pytest.approx(expected, abs=1e-6)


def test_label_smoothing_hand_computed():
    logits = torch.tensor([[0.0, LN2, LN5]])
    eps = 0.3
    # q = (1-eps) onehot(2) + eps/3; loss = -sum q log p
    q = [eps / 3, eps / 3, 1 - eps + eps / 3]
    p = [1 / 8, 2 / 8, 5 / 8]
    expected = -sum(qi * math.log(pi) for qi, pi in zip(q, p))
    got = identity_cross_entropy(logits, torch.tensor([2]), label_smoothing=eps)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_total_is_sum_of_global_and_local():
    out = _out([[0.0, LN2, LN5]], [[LN5, 0.0, LN2]])
    loss = HACNNLoss()(out, torch.tensor([2]))
    assert isinstance(loss, LossOutput)
    assert loss.global_loss.item() == pytest.approx(-math.log(5 / 8), abs=1e-6)
    assert loss.local_loss.item() == pytest.approx(-math.log(2 / 8), abs=1e-6)
    assert loss.total.item() == pytest.approx(-math.log(5 / 8) - math.log(2 / 8), abs=1e-6)
    weighted = HACNNLoss(local_weight=0.5)(out, torch.tensor([2]))
    assert weighted.total.item() == pytest.approx(-math.log(5 / 8) - 0.5 * math.log(2 / 8), abs=1e-6)


def test_global_only_model():
    out = _out([[0.0, LN2, LN5]], None)
    loss = HACNNLoss()(out, torch.tensor([1]))
    assert loss.local_loss is None
    assert loss.total.item() == pytest.approx(-math.log(2 / 8), abs=1e-6)


def test_uniform_logits_give_log_num_classes():
    out = _out(torch.zeros(4, 10).tolist(), torch.zeros(4, 10).tolist())
    loss = HACNNLoss(label_smoothing=0.1)(out, torch.tensor([0, 3, 5, 9]))
    assert loss.total.item() == pytest.approx(2 * math.log(10), abs=1e-5)


def test_half_precision_logits_are_computed_in_float32():
    logits = torch.tensor([[0.0, LN2, LN5]], dtype=torch.bfloat16)
    got = identity_cross_entropy(logits, torch.tensor([2]))
    assert got.dtype == torch.float32


def test_gradients_reach_both_heads():
    model = HACNN(5, channels=(32, 64, 96), feat_dim=16, input_size=(32, 16),
                  local_sizes=((8, 16), (4, 8), (2, 4))).train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                       # a tiny model runs fastest on one thread
    try:
        loss = HACNNLoss()(model(torch.randn(4, 3, 32, 16)), torch.tensor([0, 1, 2, 3]))
        loss.total.backward()
    finally:
        torch.set_num_threads(threads)
    assert model.classifier_global.weight.grad.abs().sum() > 0
    assert model.classifier_local.weight.grad.abs().sum() > 0


def test_invalid_smoothing():
    with pytest.raises(ValueError, match="label_smoothing"):
        HACNNLoss(label_smoothing=1.0)
