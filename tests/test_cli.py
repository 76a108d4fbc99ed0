"""python -m hacnn: help texts, run-folder safety, clear errors, convert round trip."""
import subprocess
import sys
import warnings

import pytest
import torch

from hacnn.__main__ import build_parser, main
from hacnn.checkpoint import load_model, safe_load

SUBCOMMANDS = ("train", "evaluate", "convert", "synth", "reproduce")


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "hacnn", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0
    assert all(cmd in out.stdout for cmd in SUBCOMMANDS)


@pytest.mark.parametrize("command, flags", [
    ("train", ["--dataset", "--root", "--epochs", "--batch-size", "--lr", "--recipe", "--amp",
               "--eval-every", "--seed", "--workers", "--out", "--resume", "--force", "--quick",
               "--no-local", "--no-soft", "--no-hard", "--no-cail", "--grad-clip", "--channels-last",
               "--time-budget", "--schedule", "--warmup", "--init", "--local-bn", "--random-erasing"]),
    ("evaluate", ["--weights", "--dataset", "--rerank", "--flip"]),
    ("convert", ["--from-torchreid", "--to-torchreid", "--out"]),
    ("synth", ["--size", "--misalignment", "--seed", "--out"]),
    ("reproduce", ["--out", "--force", "--seed"]),
])
def test_every_subcommand_has_help(capsys, command, flags):
    text = _help(capsys, command)
    assert text.startswith(f"usage: python -m hacnn {command}")
    for flag in flags:
        assert flag in text, flag


def test_train_defaults_are_the_adam_triplet_recipe():
    args = build_parser().parse_args(["train"])
    assert args.recipe is None and args.epochs is None and args.amp is None   # recipe fills them
    assert args.init is None                                                # HACNNConfig's default
    from hacnn.config import HACNNConfig, TrainConfig
    cfg = TrainConfig()
    assert (cfg.recipe, cfg.lr, cfg.batch_size, cfg.triplet_weight) == ("adam-triplet", 3e-4, 32, 1.0)
    assert HACNNConfig().init == "pytorch"


def test_refuses_to_overwrite_a_run_folder(tmp_path, capsys):
    (tmp_path / "last.pth").write_bytes(b"previous run")
    assert main(["train", "--out", str(tmp_path), "--epochs", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "--resume" in err and "--force" in err
    assert (tmp_path / "last.pth").read_bytes() == b"previous run"          # untouched


def test_resume_needs_a_checkpoint(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "new"), "--resume"]) == 1
    assert "holds no last.pth" in capsys.readouterr().err


def test_bad_dataset_name_is_a_clear_error(capsys):
    for argv in (["train", "--dataset", "market"], ["evaluate", "--weights", "x.pth", "--dataset", "viper"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "invalid choice" in err and "market1501" in err and "cuhk03-detected" in err


def test_missing_dataset_folder_names_what_was_expected(tmp_path, capsys):
    argv = ["train", "--dataset", "market1501", "--root", str(tmp_path), "--out", str(tmp_path / "run"),
            "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Market-1501" in err and "bounding_box_train" in err and str(tmp_path) in err


def test_quick_is_synthetic_only(tmp_path, capsys):
    assert main(["train", "--quick", "--dataset", "market1501", "--out", str(tmp_path)]) == 1
    assert "--quick" in capsys.readouterr().err


def _capture_run_experiment(monkeypatch):
    """Replace run_experiment by a recorder returning a finished-looking result."""
    import hacnn.experiment
    calls = []

    def fake(dataset, out_dir, **kw):
        calls.append({"dataset": dataset, "out_dir": out_dir, **kw})
        row = {"epoch": 8, "rank1": 0.5, "rank5": 0.75, "mAP": 0.25}
        return hacnn.experiment.RunResult(out_dir, [row], row, row, None)
    monkeypatch.setattr(hacnn.experiment, "run_experiment", fake)
    return calls


def test_train_flags_reach_the_experiment(monkeypatch, tmp_path, capsys):
    calls = _capture_run_experiment(monkeypatch)
    argv = ["train", "--dataset", "cuhk03-detected", "--root", str(tmp_path), "--recipe", "sgd",
            "--epochs", "3", "--amp", "bf16", "--lr", "0.01", "--eval-every", "2", "--seed", "7",
            "--no-local", "--no-cail", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    kw = calls[0]
    assert kw["dataset"] == "cuhk03-detected" and kw["out_dir"] == tmp_path / "run"
    assert (kw["recipe"], kw["epochs"], kw["amp"], kw["lr"], kw["eval_every"], kw["seed"]) == \
        ("sgd", 3, "bf16", 0.01, 2, 7)
    assert kw["model"] == {"local_branch": False, "cross_attention": False}
    assert kw["batch_size"] is None and kw["quick"] is False          # recipe / preset defaults
    assert "Rank-1" in capsys.readouterr().out

    assert main(["train", "--quick"]) == 0
    assert calls[1]["quick"] is True and str(calls[1]["out_dir"]) == "runs/quick"
    assert calls[1]["amp"] is None                    # TrainConfig's default ("auto"; the quick preset: fp32)
    assert main(["train", "--amp", "none"]) == 0 and calls[2]["amp"] == "none"
    assert main(["train", "--init", "pytorch", "--no-hard"]) == 0
    assert calls[3]["model"] == {"hard_attention": False, "init": "pytorch"}
    assert main(["train", "--local-bn", "per_region", "--random-erasing", "0.5"]) == 0
    assert calls[4]["model"] == {"local_bn": "per_region"} and calls[4]["random_erasing"] == 0.5
    assert calls[3]["random_erasing"] is None                         # TrainConfig's default: off


def test_reproduce_runs_the_notebook_runner(monkeypatch, tmp_path):
    from hacnn import reproduce as runner
    from hacnn.__main__ import run_reproduce
    calls = []
    monkeypatch.setattr(runner, "reproduce", lambda out, **kw: calls.append((out, kw)) or 0)
    assert main(["reproduce", "--quick", "--out", str(tmp_path / "run"), "--seed", "3"]) == 0
    out, kw = calls[0]
    assert out == tmp_path / "run" and kw["quick"] is True and kw["seed"] == 3
    assert kw["results_dir"] is None                                        # results/: full runs only
    assert build_parser().parse_args(["reproduce"]).func is run_reproduce


def test_convert_round_trip_with_torchreid(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchreid.reid.models.hacnn import HACNN as TorchreidHACNN
    torch.manual_seed(0)
    reference = TorchreidHACNN(7, use_gpu=False).eval()
    torch.save({"state_dict": reference.state_dict(), "epoch": 3}, tmp_path / "torchreid.pth.tar")

    ours, back = tmp_path / "hacnn.pth", tmp_path / "back.pth.tar"
    assert main(["convert", "--from-torchreid", str(tmp_path / "torchreid.pth.tar"), "--out", str(ours)]) == 0
    assert main(["convert", "--to-torchreid", str(ours), "--out", str(back)]) == 0
    assert "7 identities" in capsys.readouterr().out

    ckpt = safe_load(ours)
    assert ckpt["format"] == "hacnn" and ckpt["config"]["num_classes"] == 7
    model = load_model(ours).eval()
    x = torch.rand(2, 3, 160, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)

    original, returned = reference.state_dict(), safe_load(back)["state_dict"]
    assert list(returned) == list(original)
    assert all(torch.equal(returned[k], original[k]) for k in original)

    assert main(["convert", "--to-torchreid", str(ours), "--out", str(back)]) == 1   # exists
    assert "--force" in capsys.readouterr().err


# ----------------------------------------------------------------------------- end to end

TINY_MODEL = {"channels": (32, 64, 96), "feat_dim": 32, "input_size": (32, 16),
              "local_sizes": ((8, 8), (4, 4), (2, 2))}


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory):
    from hacnn.data import build_dataset
    root = tmp_path_factory.mktemp("synthetic")
    build_dataset("synthetic", root, size="tiny", workers=1)
    return root


def test_experiment_build_model_trains_the_given_network(tiny_synthetic, tmp_path, one_thread):
    """run_experiment(build_model=...) trains what the factory makes (benchmarks train torchreid's
    HACNN this way); the factory HACNN itself gives exactly the default path's run."""
    from hacnn import HACNN, HACNNConfig
    from hacnn.experiment import run_experiment

    made = []

    def build(num_classes, config):
        made.append(HACNN(num_classes, config=config))
        return made[-1]

    kw = dict(root=tiny_synthetic, model=TINY_MODEL, workers=0, progress=False, verbose=False,
              epochs=1, eval_every=1, lr=1e-3)
    a = run_experiment("synthetic", tmp_path / "a", build_model=build, **kw)
    b = run_experiment("synthetic", tmp_path / "b", **kw)
    assert len(made) == 1 and a.trainer.model is made[0]
    assert made[0].config == HACNNConfig(**TINY_MODEL, num_classes=24)
    for key in ("loss", "acc_global", "mAP", "rank1"):
        assert a.history[0][key] == b.history[0][key], key
    # a different network through the same loop: another run
    c = run_experiment("synthetic", tmp_path / "c", **{**kw, "model": {**TINY_MODEL, "init": "kaiming"}})
    assert c.history[0]["loss"] != b.history[0]["loss"]


def test_experiment_trains_resumes_and_evaluates_on_synthetic(tiny_synthetic, tmp_path, capsys, one_thread):
    from hacnn.experiment import run_experiment
    from hacnn.logging_utils import read_log

    run = tmp_path / "run"
    kw = dict(root=tiny_synthetic, model=TINY_MODEL, workers=0, progress=False, verbose=False)
    result = run_experiment("synthetic", run, epochs=2, eval_every=1, lr=1e-3, **kw)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert result.history[1]["loss"] < result.history[0]["loss"]
    assert 0 <= result.final["rank1"] <= 1 and 0 < result.final["mAP"] <= 1
    assert result.final["rank1"] <= result.final["rank5"] <= result.final["rank20"]
    assert result.trainer.model.config.num_classes == 24          # tiny synthetic: 24 train ids

    resumed = run_experiment("synthetic", run, resume=True, epochs=3, **kw)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert resumed.history[:2] == result.history                  # kept from the checkpoint
    assert read_log(run)["status"] == "finished"
    # the real loader (P x K sampler, seeded augmentation) continues exactly
    straight = run_experiment("synthetic", tmp_path / "straight", epochs=3, eval_every=1, lr=1e-3, **kw)
    for key in ("loss", "acc_global", "acc_local", "mAP"):
        assert [r[key] for r in resumed.history] == [r[key] for r in straight.history], key

    # the data comes from the run folder's run.json (synthetic, tiny, this root)
    assert main(["evaluate", "--weights", str(run / "best.pth"), "--workers", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "on synthetic" in out
    best = resumed.best
    assert "Rank-1" in out and "mAP" in out and f"{100 * best['mAP']:6.1f}%" in out
