"""hacnn.schedule: closed-form learning rates, time-budget planning, exact resume of a plan.

The expected learning rates are the formulas of the schedules written out
here; the time-budget prediction is checked on made-up timings; the runs
(the tiny HA-CNN of tests/test_training.py) get their plan injected, so no
test depends on how fast this machine is.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import hacnn.schedule as schedule
from hacnn.__main__ import build_parser
from hacnn.checkpoint import safe_load
from hacnn.config import RECIPES, TrainConfig
from hacnn.logging_utils import read_log
from hacnn.schedule import (BudgetError, build_scheduler, lr_at, make_plan, parse_duration,
                            plan_budget, predict_total_steps, refine_budget)
from test_training import TinyReID, _kill_in_epoch_2, _pause_after, _run_script, tiny_loader, tiny_trainer

pytestmark = pytest.mark.usefixtures("one_thread")
PEAK = 1e-3


def scheduled_lrs(cfg: TrainConfig, steps_per_epoch: int, steps: int) -> list[float]:
    """The learning rate of each of ``steps`` optimisation steps, read from a real optimiser."""
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=cfg.lr)
    sched = build_scheduler(opt, cfg, steps_per_epoch)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs + [opt.param_groups[0]["lr"]]       # and the lr after the last step


def cosine(u: int, w: int, t: int) -> float:
    """Linear warm-up over w steps, then half a cosine from PEAK to 0 at step t (written out)."""
    return PEAK * (u + 1) / w if u < w else PEAK * 0.5 * (1 + math.cos(math.pi * (u - w) / (t - w)))


# ----------------------------------------------------------------------------- closed forms

def test_cosine_warmup_then_zero_at_the_end_of_an_epoch_bounded_run():
    cfg = TrainConfig(schedule="cosine", lr=PEAK, epochs=5, warmup=0.2)
    plan = make_plan(cfg, 8)
    assert (plan["total_steps"], plan["warmup_steps"], plan["offset"], plan["bound"]) == (40, 8, 0, "epochs")
    lrs = scheduled_lrs(cfg, 8, 40)
    assert lrs[0] == pytest.approx(PEAK / 8, rel=1e-12)                 # step 0: 1/W of the peak
    assert lrs[7] == pytest.approx(PEAK, rel=1e-12)                     # end of the warm-up
    assert lrs[8 + 16] == pytest.approx(PEAK / 2, rel=1e-12)            # midpoint of the cosine
    assert lrs[39] == pytest.approx(PEAK * (1 + math.cos(math.pi * 31 / 32)) / 2, rel=1e-12)
    assert lrs[39] < 3e-3 * PEAK and lrs[40] == 0.0                     # ~0 at the last step, 0 after
    assert lrs == pytest.approx([cosine(s, 8, 40) for s in range(40)] + [0.0], rel=1e-12)
    assert all(a < b for a, b in zip(lrs[:8], lrs[1:8])) and all(a >= b for a, b in zip(lrs[8:], lrs[9:]))


def test_onecycle_rises_from_a_25th_and_falls_to_a_25e4th():
    cfg = TrainConfig(schedule="onecycle", lr=PEAK, epochs=4, warmup=0.25)
    lrs = scheduled_lrs(cfg, 10, 40)                                    # T = 40, W = 10
    low, end = PEAK / 25, PEAK / 25 / 1e4
    assert lrs[0] == pytest.approx(low, rel=1e-12)
    assert lrs[5] == pytest.approx(low + (PEAK - low) * 0.5, rel=1e-12)  # halfway up the cosine
    assert lrs[10] == pytest.approx(PEAK, rel=1e-12)
    assert lrs[25] == pytest.approx(end + (PEAK - end) * 0.5, rel=1e-12)  # halfway down
    assert lrs[40] == pytest.approx(end, rel=1e-12) and max(lrs) == pytest.approx(PEAK)


@pytest.mark.parametrize("recipe, kw", [("adam", {}), ("sgd", {}), ("adam", {"milestones": (0.25, 0.5)}),
                                        ("sgd", {"epochs": 7})])
def test_constant_and_step_recipes_keep_multisteplr_per_epoch_exactly(recipe, kw):
    """The learning rates of the former MultiStepLR (stepped per epoch), bit for bit, at every step."""
    cfg = TrainConfig(recipe=recipe, **{"epochs": 8, **kw})
    assert cfg.schedule == ("step" if cfg.milestones else "constant") and cfg.warmup == 0
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=cfg.lr)
    old = torch.optim.lr_scheduler.MultiStepLR(opt, cfg.milestone_epochs, cfg.gamma)
    want = []
    for _ in range(cfg.epochs):
        want += [opt.param_groups[0]["lr"]] * 3
        opt.step()
        old.step()
    assert scheduled_lrs(cfg, 3, 3 * cfg.epochs)[:-1] == want          # exact equality
    if recipe == "adam" and not kw:
        assert set(want) == {3e-4}


def test_time_budget_plan_starts_after_the_measurement_and_ends_at_zero():
    cfg = TrainConfig(schedule="cosine", lr=PEAK, epochs=100, warmup=0.1, time_budget=60)
    provisional = make_plan(cfg, 20)
    assert provisional["total_steps"] is None and provisional["offset"] == 13      # 3 skipped + 10 timed
    assert [lr_at(s, provisional, PEAK) for s in range(13)] == [0.0] * 13         # measurement at lr 0
    # step 0 ends at 2 s (one-off costs), then 0.5 s a step: 13 steps by 8 s, 52 s left = 104 steps
    plan = plan_budget(cfg, 20, [2.0 + 0.5 * i for i in range(13)], start=0.0)
    assert (plan["total_steps"], plan["bound"], plan["epochs"], plan["step_time_s"]) == (117, "time", 6, 0.5)
    assert plan["warmup_steps"] == 10                                              # 10 % of 104
    lrs = [lr_at(s, plan, PEAK) for s in range(118)]
    assert lrs[:13] == [lr_at(s, provisional, PEAK) for s in range(13)]           # the plan keeps them
    assert lrs[13:117] == pytest.approx([cosine(u, 10, 104) for u in range(104)], rel=1e-12)
    assert lrs[13] == pytest.approx(PEAK / 10) and lrs[13 + 9] == pytest.approx(PEAK)
    assert lrs[13 + 10 + 47] == pytest.approx(PEAK / 2)                           # midpoint
    assert 0 < lrs[116] < 1e-3 * PEAK and lrs[117] == 0.0
    # whichever ends first: a budget that holds more than 100 epochs is planned for the epochs
    capped = plan_budget(TrainConfig(**{**cfg.to_dict(), "time_budget": 1e6}), 20,
                         [2.0 + 0.5 * i for i in range(13)], start=0.0)
    assert (capped["total_steps"], capped["bound"], capped["epochs"]) == (2000, "epochs", 100)
    assert lr_at(2000, capped, PEAK) == 0.0


def test_step_schedule_under_a_time_budget_decays_at_fractions_of_the_planned_steps():
    cfg = TrainConfig(recipe="sgd", epochs=100, time_budget=60)                 # milestones 0.5, 0.75
    plan = plan_budget(cfg, 20, [2.0 + 0.5 * i for i in range(13)], start=0.0)  # 104 scheduled steps
    assert plan["milestone_steps"] == [52, 78]
    assert [lr_at(13 + u, plan, 0.03) for u in (0, 51, 52, 77, 78, 103)] == \
        [0.03, 0.03, 0.03 * 0.1, 0.03 * 0.1, 0.03 * 0.1 * 0.1, 0.03 * 0.1 * 0.1]


@pytest.mark.parametrize("kw, refine", [
    ({"schedule": "cosine", "warmup": 0.05}, 13 + 29),         # the end of the warm-up: 5 % of 584
    ({"schedule": "onecycle", "warmup": 0.05}, 13 + 29),
    ({"schedule": "constant"}, 300),                            # the end of the first epoch
    ({"schedule": "step", "milestones": (0.5, 0.75)}, 300),     # (the first milestone is at 292 + 13)
    ({"schedule": "step", "milestones": (0.02,)}, 13 + 12),     # a milestone inside the first epoch
    ({"schedule": "constant", "warmup": 0.1}, 300)])
def test_the_plan_is_measured_once_more_without_changing_a_step_taken(kw, refine):
    """13 steps at 0.5 s plan 597 steps; the later steps take 0.6 s, so the second measurement (every
    step since the 3 with one-off costs) fits fewer; no step up to it changes its learning rate."""
    cfg = TrainConfig(lr=PEAK, epochs=100, time_budget=300, **kw)
    ends = [2.0 + 0.5 * i for i in range(13)]
    first = plan_budget(cfg, 300, ends, start=0.0)
    assert (first["total_steps"], first["refine_at"]) == (13 + 584, refine)    # 8 s spent, 292 s / 0.5 s
    ends += [ends[-1] + 0.6 * i for i in range(1, refine - 13 + 1)]
    final = refine_budget(cfg, first, ends, start=0.0)
    step_s = (ends[-1] - ends[2]) / (refine - 3)                                # written out
    assert final["step_time_s"] == pytest.approx(step_s, rel=1e-12)
    assert final["total_steps"] == refine + math.floor((300 - ends[-1]) / step_s) < first["total_steps"]
    assert final["refine_at"] is None and final["warmup_steps"] == first["warmup_steps"]
    assert final["epochs"] == -(-final["total_steps"] // 300) and final["bound"] == "time"
    assert [lr_at(s, final, PEAK) for s in range(refine)] == [lr_at(s, first, PEAK) for s in range(refine)]
    assert all(m >= refine - 13 for m in final["milestone_steps"])
    if kw["schedule"] == "cosine":
        assert lr_at(final["total_steps"], final, PEAK) == 0.0                 # anneals at the new end
        assert lr_at(final["total_steps"] - 1, final, PEAK) > 0.0


def test_no_second_measurement_when_nothing_is_left_to_measure_and_a_spent_budget_ends_next_step():
    ends = [2.0 + 0.5 * i for i in range(13)]
    no_warmup = TrainConfig(schedule="cosine", epochs=100, time_budget=300)     # its decay starts at once
    assert no_warmup.warmup == 0.0 and plan_budget(no_warmup, 20, ends, 0.0)["refine_at"] is None
    assert plan_budget(TrainConfig(epochs=100, time_budget=300), 20, ends, 0.0)["refine_at"] == 20
    assert plan_budget(TrainConfig(epochs=100, time_budget=300), 13, ends, 0.0)["refine_at"] is None
    assert make_plan(TrainConfig(schedule="cosine", epochs=3), 20)["refine_at"] is None    # epoch-bounded
    cfg = TrainConfig(schedule="cosine", warmup=0.1, epochs=100, time_budget=20)
    first = plan_budget(cfg, 40, ends, 0.0)                  # 12 s left: 24 more steps, warm-up 2
    assert (first["total_steps"], first["warmup_steps"], first["refine_at"]) == (37, 2, 15)
    spent = refine_budget(cfg, first, ends + [30.0, 31.0], 0.0)   # 31 s of a 20 s budget gone
    assert spent["total_steps"] == 16 and lr_at(16, spent, PEAK) == 0.0


# ----------------------------------------------------------------------------- prediction

def test_predict_total_steps_on_made_up_timings():
    ends = [5.0, 5.5, 6.0] + [6.0 + 0.25 * i for i in range(1, 11)]     # 3 slow steps, then 0.25 s
    total, step_s = predict_total_steps(ends, start=0.0, budget_s=100.0, skip=3)
    assert step_s == pytest.approx(0.25)                                 # the one-off costs left out
    assert total == 13 + math.floor((100 - 8.5) / 0.25)                  # 8.5 s spent, 366 more steps
    assert predict_total_steps(ends, start=0.0, budget_s=100.0, skip=0)[1] == pytest.approx(8.5 / 13)
    assert predict_total_steps(ends, start=0.0, budget_s=8.6, skip=3)[0] == 13   # nothing more fits
    with pytest.raises(BudgetError, match=r"time budget \(0.2 s\) is shorter than one training step"):
        predict_total_steps(ends, start=0.0, budget_s=0.2, skip=3)


def test_a_budget_used_up_by_the_measurement_is_one_clear_error():
    cfg = TrainConfig(schedule="cosine", epochs=10, time_budget=7)
    with pytest.raises(BudgetError, match=r"used up by the 13 steps.*0.5 s per step.*at least 13 s"):
        plan_budget(cfg, 20, [2.0 + 0.5 * i for i in range(13)], start=0.0)


# ----------------------------------------------------------------------------- config and CLI

@pytest.mark.parametrize("text, seconds", [("90s", 90), ("20m", 1200), ("1.5h", 5400), ("300", 300),
                                           ("2.5", 2.5), (" 45 S ", 45), (".5m", 30)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0m", "-5m", "abc", "10x", "1h30m", "inf", "nan", "m"])
def test_parse_duration_refuses_what_is_not_a_positive_duration(text):
    with pytest.raises(ValueError, match="expected a positive duration such as 90s, 20m, 1.5h"):
        parse_duration(text)


def test_cli_time_budget(capsys):
    args = build_parser().parse_args(["train", "--time-budget", "20m", "--recipe", "adam-cosine",
                                      "--schedule", "onecycle", "--warmup", "0.1"])
    assert (args.time_budget, args.recipe, args.schedule, args.warmup) == \
        (1200.0, "adam-cosine", "onecycle", 0.1)
    assert build_parser().parse_args(["train"]).time_budget is None
    for bad in ("0", "=-1m", "soon"):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(["train", "--time-budget" + (bad if bad[0] == "=" else ""),
                                       *([] if bad[0] == "=" else [bad])])
        assert exit_.value.code == 2
        assert "argument --time-budget: expected a positive duration" in capsys.readouterr().err


def test_config_fields_recipes_and_bad_values():
    default = TrainConfig()
    assert (default.recipe, default.schedule, default.warmup, default.label_smoothing,
            default.time_budget) == ("adam-triplet", "constant", 0.0, 0.0, None)
    assert TrainConfig(recipe="sgd").schedule == "step"
    cos = TrainConfig(recipe="adam-cosine")
    assert (cos.optimizer, cos.lr, cos.schedule, cos.warmup, cos.label_smoothing) == \
        ("adam", 1e-3, "cosine", 0.05, 0.1)
    assert TrainConfig(recipe="adam-cosine", label_smoothing=0.0, warmup=0.0).label_smoothing == 0.0
    assert TrainConfig.from_dict(cos.to_dict()) == cos
    old = {k: v for k, v in default.to_dict().items() if k not in ("schedule", "warmup", "time_budget")}
    assert TrainConfig.from_dict(old) == default                         # a checkpoint from before
    assert "adam-cosine" in RECIPES and TrainConfig().recipe != "adam-cosine"
    tri = TrainConfig(recipe="adam-triplet")
    assert (tri.lr, tri.schedule, tri.label_smoothing, tri.triplet_weight, tri.triplet_margin) == \
        (3e-4, "constant", 0.0, 1.0, 0.3)
    assert TrainConfig(recipe="adam").triplet_weight == TrainConfig(recipe="adam-cosine").triplet_weight == 0.0
    assert TrainConfig().recipe == "adam-triplet" and TrainConfig().triplet_weight == 1.0   # the default
    assert TrainConfig(recipe="adam-triplet", triplet_weight=0.5).triplet_weight == 0.5
    for bad, match in [({"time_budget": 0}, "time_budget must be a positive"),
                       ({"time_budget": -60.0}, "time_budget"), ({"time_budget": math.nan}, "time_budget"),
                       ({"warmup": 1.0}, r"warmup is a fraction of the run in \[0, 1\)"),
                       ({"warmup": -0.1}, "warmup"), ({"schedule": "linear"}, "schedule must be one of")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)


# ----------------------------------------------------------------------------- tiny runs

def _fake_prediction(total: int, calls: list | None = None):
    def predict(step_ends, start, budget_s, skip=3):
        if calls is not None:
            calls.append((len(step_ends), skip, budget_s))
        return total, 0.01
    return predict


BUDGET_RUN = dict(epochs=50, schedule="cosine", warmup=0.2, time_budget=60.0, eval_every=1)


def test_time_budget_run_follows_its_plan_evaluates_at_the_end_and_anneals(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(schedule, "predict_total_steps", _fake_prediction(10, calls))
    trainer = tiny_trainer(tmp_path, **BUDGET_RUN)        # 4 steps per epoch: all 4 of epoch 1 measure
    history = trainer.fit()
    assert calls == [(4, 3, 60.0)]
    assert [r["epoch"] for r in history] == [1, 2, 3]     # 4 + 4 + 2 steps
    assert ["mAP" in r for r in history] == [False, False, True]       # one evaluation, at the end
    w, t = 1, 6                                           # 20 % of the 6 scheduled steps
    assert [r["lr"] for r in history] == pytest.approx(
        [0.0, cosine(7 - 4, w, t), cosine(9 - 4, w, t)], rel=1e-12)    # each epoch's last step
    assert trainer.step == 10 and trainer.optimizer.param_groups[0]["lr"] == 0.0
    ckpt = safe_load(tmp_path / "last.pth")["train"]
    assert ckpt["step"] == 10 and ckpt["plan"] == read_log(tmp_path)["plan"] == trainer.plan
    assert (ckpt["plan"]["total_steps"], ckpt["plan"]["bound"], ckpt["plan"]["offset"]) == (10, "time", 4)


def test_a_time_budget_run_is_planned_again_at_the_end_of_its_warm_up(tmp_path, monkeypatch):
    """16 steps an epoch: the first plan (40 steps, warm-up 5) is measured again after 16 steps (the
    first epoch's end comes before the warm-up's), 30 steps fit; the log and checkpoint hold that."""
    calls = []

    def predict(step_ends, start, budget_s, skip=3):
        calls.append((len(step_ends), skip))
        return (40 if len(calls) == 1 else 30), 0.01
    monkeypatch.setattr(schedule, "predict_total_steps", predict)
    loader = DataLoader(TinyReID(), batch_size=2, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    trainer = tiny_trainer(tmp_path, loader=loader, batch_size=2, num_instances=2,
                           **{**BUDGET_RUN, "warmup": 0.2})
    history = trainer.fit()
    assert calls == [(13, 3), (16, 3)]
    w, t = 5, 17                                          # warm-up of the first plan; 30 - 13 steps
    assert trainer.step == 30 and [r["epoch"] for r in history] == [1, 2]
    assert [r["lr"] for r in history] == pytest.approx([PEAK * 3 / w, cosine(29 - 13, w, t)], rel=1e-12)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.0
    plan = safe_load(tmp_path / "last.pth")["train"]["plan"]
    assert plan == read_log(tmp_path)["plan"] == trainer.plan
    assert (plan["total_steps"], plan["warmup_steps"], plan["refine_at"], plan["epochs"]) == (30, 5, None, 2)


def test_whichever_ends_first_epochs_bound_a_generous_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(schedule, "predict_total_steps", _fake_prediction(10**6))
    trainer = tiny_trainer(tmp_path, **{**BUDGET_RUN, "epochs": 2})
    history = trainer.fit()
    assert [r["epoch"] for r in history] == [1, 2] and trainer.plan["bound"] == "epochs"
    assert trainer.plan["total_steps"] == 8 and trainer.optimizer.param_groups[0]["lr"] == 0.0


def test_epoch_bounded_cosine_run_ends_at_zero(tmp_path):
    trainer = tiny_trainer(tmp_path, epochs=3, schedule="cosine", warmup=0.25, eval_every=0)
    history = trainer.fit()                               # 12 steps, warm-up 3
    assert [r["lr"] for r in history] == pytest.approx([cosine(s, 3, 12) for s in (3, 7, 11)], rel=1e-12)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.0


def test_budget_shorter_than_a_step_stops_before_any_checkpoint(tmp_path):
    trainer = tiny_trainer(tmp_path, **{**BUDGET_RUN, "time_budget": 1e-6})
    with pytest.raises(BudgetError, match="shorter than one training step"):
        trainer.fit()
    assert not (tmp_path / "last.pth").exists()
    log = read_log(tmp_path)
    assert log["status"] == "stopped" and "shorter than one training step" in log["message"]


def test_changing_epochs_of_a_cosine_run_on_resume_warns(tmp_path):
    tiny_trainer(tmp_path, epochs=2, schedule="cosine", eval_every=0).fit()
    longer = tiny_trainer(tmp_path, epochs=4, schedule="cosine", eval_every=0)
    with pytest.warns(UserWarning, match="epochs changed from 2 to 4: the cosine schedule is planned anew"):
        longer.resume()
    assert longer.plan["total_steps"] == 16 and longer.optimizer.param_groups[0]["lr"] == \
        pytest.approx(PEAK * (1 + math.cos(math.pi * 8 / 16)) / 2)


@pytest.mark.parametrize("saved_plan", [True, False])
def test_more_epochs_on_resume_continue_exactly(tmp_path, saved_plan):
    """A finished 1-epoch run resumed for 2 epochs is the 2-epoch run, bitwise (its last epoch ran
    the loader out as any epoch does); also from a last.pth of before plans were saved."""
    straight = tiny_trainer(tmp_path / "straight", epochs=2, eval_every=0)
    straight.fit()
    tiny_trainer(tmp_path / "old", epochs=1, eval_every=0).fit()
    ckpt = safe_load(tmp_path / "old" / "last.pth")
    if not saved_plan:
        del ckpt["train"]["plan"], ckpt["train"]["step"]
    resumed = tiny_trainer(tmp_path / "old", epochs=2, eval_every=0)
    resumed.resume(ckpt)
    assert resumed.step == 4 and resumed.plan["total_steps"] == 8
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


class Unsized:
    """A loader without a length: two fixed batches per pass."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_a_loader_without_length_trains_at_constant_lr_and_refuses_a_planned_schedule(tmp_path):
    batches = Unsized(list(tiny_loader())[:2])
    history = tiny_trainer(tmp_path / "constant", epochs=2, loader=batches, eval_every=0).fit()
    assert [r["lr"] for r in history] == [PEAK, PEAK]
    for kw in ({"schedule": "cosine"}, {"warmup": 0.1}, {"time_budget": 60.0}):
        with pytest.raises(ValueError, match=r"the training loader needs a length \(len\(loader\)\)"):
            tiny_trainer(tmp_path / "planned", loader=batches, **kw)


@pytest.mark.slow
def test_resume_after_sigkill_continues_the_saved_time_budget_plan(tmp_path):
    """Killed in epoch 2, resumed without measuring again: the uninterrupted run's weights, bitwise."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    _kill_in_epoch_2(killed, full, tmp_path / "mid_epoch_2", script=__file__)
    saved = safe_load(killed / "last.pth")["train"]
    assert saved["epoch"] == 1 and saved["plan"]["total_steps"] == 10   # the plan came with epoch 1
    resumed = _run_script(killed, "--resume", script=__file__)         # its prediction would raise
    assert resumed.returncode == 0, resumed.stderr

    want, got = read_log(full), read_log(killed)
    assert got["plan"] == want["plan"] == saved["plan"]
    assert [r["epoch"] for r in got["epochs"]] == [1, 2, 3]
    for key in ("loss", "acc_global", "lr", "mAP"):
        assert [r[key] for r in got["epochs"]] == [r[key] for r in want["epochs"]], key
    a, b = safe_load(full / "last.pth")["model"], safe_load(killed / "last.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _main(argv: list[str]) -> None:
    """Subprocess entry: a tiny time-budget run planned at 10 steps; pause in epoch 2 or resume."""
    from hacnn.training import Trainer

    torch.set_num_threads(1)
    resume = "--resume" in argv

    def predict(*args, **kwargs):
        assert not resume, "a resumed run measured its throughput again"
        return 10, 0.01
    schedule.predict_total_steps = predict
    cls = Trainer
    if "--pause-in-epoch-2" in argv:
        marker = Path(argv[argv.index("--pause-in-epoch-2") + 1])

        class PausingTrainer(Trainer):
            def train_epoch(self):
                if self.epoch == 1:
                    self.train_loader = _pause_after(self.train_loader, 2, marker)
                return super().train_epoch()
        cls = PausingTrainer
    trainer = tiny_trainer(Path(argv[0]), cls=cls, **BUDGET_RUN)
    if resume:
        trainer.resume()
    trainer.fit()


if __name__ == "__main__":
    _main(sys.argv[1:])
