"""hacnn.losses against hand-computed values (paper Sec. 3.3)."""
import math

import pytest
import torch

from hacnn import HACNN
from hacnn.config import TrainConfig
from hacnn.losses import HACNNLoss, LossOutput, batch_hard_triplet, identity_cross_entropy
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


# ----------------------------------------------------------------------------- batch-hard triplet

def _brute_force_triplet(f, y, margin):
    """Eq. 5 of Hermans et al. by loops over every anchor, positive and negative."""
    f = torch.nn.functional.normalize(f, dim=1)
    terms = []
    for a in range(len(y)):
        pos = [float((f[a] - f[p]).norm()) for p in range(len(y)) if p != a and y[p] == y[a]]
        neg = [float((f[a] - f[n]).norm()) for n in range(len(y)) if y[n] != y[a]]
        if pos and neg:
            terms.append(max(0.0, margin + max(pos) - min(neg)))
    return sum(terms) / len(terms)


def test_batch_hard_triplet_hand_computed():
    # unit vectors at angles 0, 90 (id 0) and 180, 60 degrees (id 1); chord lengths 2 sin(d/2)
    deg = torch.tensor([0.0, 90.0, 180.0, 60.0]) * math.pi / 180
    f = torch.stack([deg.cos(), deg.sin()], 1) * torch.tensor([[1.0], [3.0], [0.5], [2.0]])  # norms ignored
    y = torch.tensor([0, 0, 1, 1])
    chord = lambda d: 2 * math.sin(math.radians(d) / 2)          # noqa: E731
    # anchor 0: pos 90, nearest neg 60; anchor 1: pos 90, neg min(90, 30)=30;
    # anchor 2: pos 120, neg min(180, 90)=90;   anchor 3: pos 120, neg min(60, 30)=30
    m = 0.3
    expected = (max(0, m + chord(90) - chord(60)) + max(0, m + chord(90) - chord(30))
                + max(0, m + chord(120) - chord(90)) + max(0, m + chord(120) - chord(30))) / 4
    assert batch_hard_triplet(f, y, m).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_hard_triplet_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(12, 5, generator=g)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4])        # id 3 has no positive: left out
    assert batch_hard_triplet(f, y, 0.5).item() == pytest.approx(_brute_force_triplet(f, y, 0.5), abs=1e-5)


def test_batch_hard_triplet_gradients_and_degenerate_batches():
    f = torch.randn(6, 4, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    batch_hard_triplet(f, y, 2.0).backward()         # margin 2 > any chord: every anchor active
    assert torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0
    same = torch.ones(4, 4, requires_grad=True)      # identical features: distance 0, still finite
    batch_hard_triplet(same, torch.tensor([0, 0, 1, 1])).backward()
    assert torch.isfinite(same.grad).all()
    alone = torch.randn(3, 4, requires_grad=True)    # no anchor has a positive: 0, with a graph
    loss = batch_hard_triplet(alone, torch.tensor([0, 1, 2]))
    loss.backward()
    assert loss.item() == 0.0 and (alone.grad == 0).all()


def test_hacnn_loss_adds_weighted_triplet_per_stream():
    g = torch.Generator().manual_seed(0)
    logits_g, logits_l = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    feat_g, feat_l = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    y = torch.tensor([0, 0, 1, 1])
    out = HACNNOutput(logits_g, logits_l, feat_g, feat_l)
    got = HACNNLoss(triplet_weight=0.5, triplet_margin=0.3)(out, y)
    ce = identity_cross_entropy(logits_g, y) + identity_cross_entropy(logits_l, y)
    tri = batch_hard_triplet(feat_g, y, 0.3) + batch_hard_triplet(feat_l, y, 0.3)
    assert got.total.item() == pytest.approx((ce + 0.5 * tri).item(), abs=1e-6)
    assert tri.item() > 0                                   # the term is not vacuous here
    assert HACNNLoss()(out, y).total.item() == pytest.approx(ce.item(), abs=1e-6)   # paper: CE only
    with pytest.raises(ValueError, match="features"):
        HACNNLoss(triplet_weight=1.0)(HACNNOutput(logits_g, None, None, None), y)


def test_triplet_settings_validated():
    assert TrainConfig().triplet_weight == 1.0                       # the default recipe, adam-triplet
    assert TrainConfig(recipe="adam").triplet_weight == 0.0          # the paper's cross-entropy alone
    assert TrainConfig(recipe="adam", num_instances=1).num_instances == 1
    with pytest.raises(ValueError, match="num_instances >= 2"):
        TrainConfig(num_instances=1)
    with pytest.raises(ValueError, match="num_instances >= 2"):
        TrainConfig(recipe="adam", triplet_weight=1.0, num_instances=1)
    with pytest.raises(ValueError, match="triplet_margin"):
        TrainConfig(triplet_weight=1.0, triplet_margin=0.0)
    with pytest.raises(ValueError, match="triplet_weight"):
        HACNNLoss(triplet_weight=-1.0)
