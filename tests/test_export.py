"""hacnn.export: the ONNX graph computes PyTorch's features (onnxruntime), moving regions included."""
import re

import numpy as np
import pytest
import torch
from conftest import randomize_bn

from hacnn import HACNN
from hacnn.__main__ import main
from hacnn.attention import stripe_translations
from hacnn.checkpoint import CheckpointError, atomic_save
from hacnn.export import DEFAULT_OPSET, MAX_OPSET, export_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(channels=(32, 64, 96), feat_dim=16, input_size=(32, 16), local_sizes=((8, 8), (4, 4), (2, 2)))


def moving_regions_model() -> HACNN:
    """Trained-like BN statistics and random hard-attention weights: every image moves its regions."""
    torch.manual_seed(0)
    model = randomize_bn(HACNN(5, **TINY, init="kaiming")).eval()   # Kaiming's larger weights: varied inputs to fc
    with torch.no_grad():
        for ha in model.attention:
            ha.hard.fc.weight.normal_(0, 2.0)
    return model


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["features"], {"images": x.numpy()})[0]


def test_onnx_features_equal_pytorch_at_two_batch_sizes(tmp_path):
    model = moving_regions_model()
    path = export_onnx(model, tmp_path / "m.onnx", batch=2)
    g = torch.Generator().manual_seed(1)
    for batch in (3, 8):                                 # neither is the traced batch of 2
        x = torch.randn(batch, 3, 32, 16, generator=g)
        record = []
        with torch.no_grad():
            model.forward_features(x, record)
            expected = model(x)
        theta = torch.stack([t for *_, t in record])                   # (levels, B, T, 2)
        shift = (theta - stripe_translations(4)).abs()
        assert shift.amax() > 0.3 and theta.std(1).amax() > 0.05       # regions moved, image by image
        out = run_onnx(path, x)
        assert out.shape == (batch, model.feature_dim)
        assert np.abs(out - expected.numpy()).max() <= 1e-4


def test_metadata_opset_and_atomic_write(tmp_path):
    model = HACNN(5, **TINY).eval()
    path = export_onnx(model, tmp_path / "m.onnx", opset=17)
    proto = onnx.load(path)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["opset"] == "17" and meta["feature_dim"] == "32" and meta["exporter"] == "torchscript"
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert DEFAULT_OPSET == 18
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="pass --force"):
        export_onnx(model, path)
    with pytest.raises(ValueError, match=rf"opset in 11\.\.{MAX_OPSET['torchscript']}"):
        export_onnx(model, tmp_path / "x.onnx", opset=21)
    from unittest import mock
    with mock.patch.object(onnx.checker, "check_model", side_effect=RuntimeError("boom")):
        with pytest.raises(RuntimeError, match="boom"):
            export_onnx(model, path, force=True)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_cli_export_and_bad_checkpoints(tmp_path, capsys):
    model = moving_regions_model()
    w = tmp_path / "w.pth"
    atomic_save({"format": "hacnn", "version": 1, "config": model.config.to_dict(), "model": model.state_dict()}, w)
    assert main(["export", "--weights", str(w), "--out", str(tmp_path / "m.onnx"), "--batch", "1"]) == 0
    assert f"opset {DEFAULT_OPSET}, dynamic batch axis" in capsys.readouterr().out
    x = torch.randn(4, 3, 32, 16)
    with torch.no_grad():
        assert np.abs(run_onnx(tmp_path / "m.onnx", x) - model(x).numpy()).max() <= 1e-4
    # a classifier that disagrees with the config
    bad = tmp_path / "bad.pth"
    atomic_save({"format": "hacnn", "version": 1, "config": {**model.config.to_dict(), "num_classes": 9},
                 "model": model.state_dict()}, bad)
    assert main(["export", "--weights", str(bad), "--out", str(tmp_path / "b.onnx")]) == 1
    assert re.search(r"bad\.pth disagrees with itself: its config says num_classes=9, its classifier has 5",
                     capsys.readouterr().err)
    # not an HA-CNN
    other = tmp_path / "resnet.pth"
    atomic_save({"state_dict": {"conv1.weight": torch.zeros(4, 3, 3, 3)}}, other)
    assert main(["export", "--weights", str(other), "--out", str(tmp_path / "b.onnx")]) == 1
    assert "holds no HA-CNN weights" in capsys.readouterr().err
    assert not (tmp_path / "b.onnx").exists()
    with pytest.raises(CheckpointError, match="expected an HACNN"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "b.onnx")
