"""Reference weights (hacnn.zoo, hacnn.pretrained): the fp16 export round trip, weights_only loading, clear
errors, and the committed weights against the metrics their card states."""
import json

import pytest
import torch

import hacnn.zoo as P
from hacnn import HACNN
from hacnn.checkpoint import FORMAT, VERSION, CheckpointError, atomic_save


@pytest.fixture()
def weights_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "WEIGHTS_DIR", tmp_path / "weights")
    return tmp_path / "weights"


def _checkpoint(tmp_path, **cfg):
    torch.manual_seed(0)
    model = HACNN(7, **cfg)
    for m in model.modules():            # non-trivial batch-norm statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    path = atomic_save({"format": FORMAT, "version": VERSION, "config": model.config.to_dict(),
                        "model": model.state_dict()}, tmp_path / "last.pth")
    return model.eval(), path


def test_export_is_fp16_weights_that_load_as_the_rounded_model(tmp_path, weights_dir):
    model, ckpt = _checkpoint(tmp_path)
    metrics = {"rank1": 0.5, "mAP": 0.25}
    path = P.export_weights(ckpt, "synthetic-full", metrics=metrics, provenance={"commit": "abc"},
                            out_dir=weights_dir)
    saved = torch.load(path, weights_only=True)
    floats = [v for v in saved["model"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    ints = {k: v for k, v in saved["model"].items() if not v.is_floating_point()}
    assert ints and all(torch.equal(v, model.state_dict()[k]) for k, v in ints.items())  # BN step counts kept
    # a model whose weights are rounded to fp16 by hand gives the same features, bit for bit
    rounded = HACNN(7)
    rounded.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                             for k, v in model.state_dict().items()})
    loaded = P.pretrained("synthetic-full")
    assert not loaded.training
    x = torch.randn(2, 3, 160, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), rounded.eval()(x))
        assert (loaded(x) - model(x)).abs().max() < 0.05      # and fp16 rounding is small
    card = P.card("synthetic-full")
    assert card["metrics"] == metrics and card["provenance"] == {"commit": "abc"}
    assert card["config"]["num_classes"] == 7 and card["dtype"] == "float16"
    assert set(P.available()) == {"synthetic-full"}
    # the torch.hub entry loads the same reference weights by name
    from pathlib import Path
    hub = torch.hub.load(str(Path(__file__).resolve().parents[1]), "hacnn", source="local",
                         weights="synthetic-full")
    with torch.no_grad():
        assert not hub.training and torch.equal(hub(x), loaded(x))
    with pytest.raises(ValueError, match="own config"):
        torch.hub.load(str(Path(__file__).resolve().parents[1]), "hacnn", source="local",
                       weights="synthetic-full", feat_dim=256)


def test_unknown_or_missing_weights_are_one_clear_error(tmp_path, weights_dir):
    with pytest.raises(ValueError, match="known: "):
        P.pretrained("market1501")
    with pytest.raises(FileNotFoundError, match="reproduce --reference"):
        P.pretrained("synthetic-global-only")
    assert P.available() == {}
    # a file that is not plain tensors is refused by weights_only loading, not executed
    weights_dir.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"format": FORMAT, "model": Evil()}, weights_dir / "synthetic-full.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        P.pretrained("synthetic-full")


def test_export_needs_a_hacnn_checkpoint(tmp_path, weights_dir):
    model, _ = _checkpoint(tmp_path)
    bare = atomic_save(model.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(ValueError, match="no hacnn model config"):
        P.export_weights(bare, "synthetic-full", metrics={}, provenance={}, out_dir=weights_dir)
    assert not weights_dir.exists() or not any(weights_dir.iterdir())


@pytest.mark.parametrize("name", sorted(P.REFERENCE_WEIGHTS))
def test_committed_reference_weights_score_what_their_card_states(name):
    if name not in P.available():
        pytest.skip(f"reference weights {name!r} are not committed in this checkout yet")
    from hacnn.experiment import evaluate_checkpoint

    card = P.card(name)
    size = card["provenance"]["benchmark"].split()[-1]
    result = evaluate_checkpoint(P.weights_path(name), "synthetic", synthetic_size=size,
                                 progress=False).row()
    for key in ("rank1", "mAP"):
        assert f"{100 * result[key]:.1f}" == f"{100 * card['metrics'][key]:.1f}", (key, result[key])
    assert json.loads(json.dumps(card["config"]))["num_classes"] == P.pretrained(name).config.num_classes


def test_publish_weights_states_the_metrics_of_the_file_it_writes(tmp_path, weights_dir, monkeypatch):
    """A tiny protocol end to end: the two weights' runs train, export as fp16, and each card's
    metrics are what evaluating that very file gives (not the fp32 run's)."""
    from hacnn.experiment import evaluate_checkpoint
    from hacnn.reference import Protocol, publish_weights

    monkeypatch.setenv("HACNN_RUN_CACHE", str(tmp_path / "cache"))
    tiny = Protocol(size="tiny", epochs=1, eval_every=1, seeds=(3,), weights_size="tiny")
    lines = []
    written = publish_weights(tiny, out_dir=weights_dir, provenance={"commit": "test"}, log=lines.append)
    assert set(written) == set(P.REFERENCE_WEIGHTS) == set(P.available())
    for name, metrics in written.items():
        card = P.card(name)
        assert card["metrics"] == metrics and card["provenance"]["commit"] == "test"
        assert card["provenance"]["benchmark"] == "synthetic tiny" and card["provenance"]["seed"] == 3
        again = evaluate_checkpoint(P.weights_path(name), "synthetic", synthetic_size="tiny",
                                    progress=False).row()
        assert again["rank1"] == pytest.approx(metrics["rank1"], abs=1e-6)
        assert again["mAP"] == pytest.approx(metrics["mAP"], abs=1e-6)
    assert P.pretrained("synthetic-global-only").config.local_branch is False
    assert P.pretrained("synthetic-full").config.local_branch is True
    assert len(lines) == 2


def test_a_run_loaded_from_its_record_hands_out_the_weights_exported_from_it(tmp_path, weights_dir):
    from hacnn.reference import publish_weights
    from hacnn.reproduce import CachedRun

    _, ckpt = _checkpoint(tmp_path)
    P.export_weights(ckpt, "synthetic-full", metrics={}, provenance={"run": "synthetic-0123abcd"},
                     out_dir=weights_dir)
    record = tmp_path / "records" / "synthetic-0123abcd"        # history and config, no last.pth
    record.mkdir(parents=True)
    run = CachedRun(record, [], {}, {}, {}, True)
    assert run.from_record and run.weights == weights_dir / "synthetic-full.pt"
    other = CachedRun(tmp_path / "records" / "synthetic-ffffffff", [], {}, {}, {}, True)
    with pytest.raises(FileNotFoundError, match="no reference weights were exported from it"):
        other.weights
    assert P.exported_from("synthetic-ffffffff") is None
    with pytest.raises(ValueError, match="no reference weights named"):
        publish_weights(names=["synthetic-nope"], out_dir=weights_dir)
