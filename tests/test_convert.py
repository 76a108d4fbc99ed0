"""torchreid <-> hacnn conversion: same weights give the same eval features."""
import warnings
from pathlib import Path

import pytest
import torch
from conftest import randomize_bn

from hacnn import HACNN
from hacnn.checkpoint import CheckpointError, atomic_save, load_model
from hacnn.convert import from_torchreid, num_classes_of, to_torchreid

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    TorchreidHACNN = pytest.importorskip("torchreid.reid.models.hacnn").HACNN

REPO = Path(__file__).resolve().parents[1]


def randomized_torchreid(num_classes=11, seed=0):
    """torchreid's HACNN with non-trivial BN statistics and hard-attention weights."""
    torch.manual_seed(seed)
    m = randomize_bn(TorchreidHACNN(num_classes, use_gpu=False))
    with torch.no_grad():
        for ha in (m.ha1, m.ha2, m.ha3):     # move the regions off the stripes
            ha.hard_attn.fc.weight.normal_(0, 0.05)
            ha.hard_attn.fc.bias.uniform_(-0.9, 0.9)
    return m.eval()


@pytest.fixture(scope="module")
def pair():
    tr = randomized_torchreid()
    ours = HACNN(11).eval()
    ours.load_state_dict(from_torchreid(tr.state_dict()))
    return tr, ours


def test_eval_features_agree_with_torchreid(pair):
    tr, ours = pair
    x = torch.randn(8, 3, 160, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = tr(x)
        torch.testing.assert_close(ours(x), ref, atol=1e-5, rtol=0)


def test_round_trip_names_and_values(pair):
    tr, ours = pair
    back = to_torchreid(ours.state_dict())
    assert sorted(back) == sorted(tr.state_dict())
    for k, v in tr.state_dict().items():
        assert torch.equal(back[k], v), k
    assert num_classes_of(ours.state_dict()) == 11


def test_checkpoint_wrappers_and_unknown_keys(pair):
    tr, _ = pair
    wrapped = {"state_dict": {f"module.{k}": v for k, v in tr.state_dict().items()}, "epoch": 3}
    assert list(from_torchreid(wrapped)) == list(from_torchreid(tr.state_dict()))
    with pytest.raises(KeyError, match="not part of the HA-CNN"):
        from_torchreid({"backbone.layer1.weight": torch.zeros(1)})


def test_load_model_from_torchreid_file_and_hub(pair, tmp_path):
    tr, ours = pair
    path = atomic_save({"state_dict": tr.state_dict(), "epoch": 1}, tmp_path / "model.pth.tar")
    x = torch.randn(2, 3, 160, 64)
    with torch.no_grad():
        torch.testing.assert_close(load_model(path).eval()(x), ours(x))
        hub = torch.hub.load(str(REPO), "hacnn", source="local", num_classes=11, weights=str(path))
        torch.testing.assert_close(hub.eval()(x), ours(x))
        # a different number of identities keeps the backbone, replaces the classifiers
        m = torch.hub.load(str(REPO), "hacnn", source="local", num_classes=4, weights=str(path))
    assert m.classifier_global.out_features == 4
    torch.testing.assert_close(m.stem.conv.weight, ours.stem.conv.weight)
    assert torch.hub.load(str(REPO), "hacnn", source="local", num_classes=3).classifier_local.out_features == 3


def test_load_model_rejects_foreign_checkpoints(tmp_path):
    path = atomic_save({"resnet.fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="no HA-CNN weights"):
        load_model(path)
