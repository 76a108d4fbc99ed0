"""Learning-rate schedules over a whole planned run, and planning a run to a time budget.

A *plan* (a plain dict, saved in every checkpoint) fixes the run's length in
optimisation steps, and with it the learning rate of every step:
:func:`lr_at` is a closed form of ``(step, plan, peak lr)``, stepped once per
optimisation step by :class:`RunSchedule`. ``TrainConfig.schedule``:

- ``"constant"``: the peak lr throughout (the ``adam`` recipe, torchreid's
  reproduction);
- ``"step"``: lr x ``gamma`` at each milestone (the ``sgd`` recipe); in an
  epoch-bounded run the milestones fall on the epochs of
  ``TrainConfig.milestone_epochs``, so both give exactly the learning rates
  of ``torch.optim.lr_scheduler.MultiStepLR`` stepped per epoch;
- ``"cosine"``: linear warm-up over ``W`` steps (``peak * (u + 1) / W``),
  then half a cosine from the peak to exactly 0 at the end of the run
  (Loshchilov & Hutter, "SGDR", ICLR 2017; warm-up: Goyal et al., 2017):
  ``peak * (1 + cos(pi * (u - W) / (T - W))) / 2``;
- ``"onecycle"``: Smith & Topin's one-cycle policy (2018) as
  ``torch.optim.lr_scheduler.OneCycleLR`` draws it (learning rate only, no
  momentum cycle): a cosine rise from ``peak / 25`` to the peak over ``W``
  steps, then a cosine fall to ``peak / 25 / 1e4``.

``W = TrainConfig.warmup`` x the scheduled steps (a fraction of the run, so
one recipe fits any length or budget); ``constant`` and ``step`` take a
linear warm-up too when ``warmup > 0`` (default 0: none).

Time budget (``TrainConfig.time_budget``, seconds): the budget bounds the
training steps, counted from the start of ``Trainer.fit``. The first
``MEASURE_SKIP + MEASURE_STEPS`` steps (13; at most one epoch) time the
throughput **at learning rate 0**: the weights do not move (the batch-norm
statistics and the optimiser's moment estimates do), so no step's learning
rate depends on a length not yet known. The first ``MEASURE_SKIP`` steps
carry one-off costs (allocator, cuDNN autotuning, loader start-up) and are
left out of the step time; :func:`predict_total_steps` then fits as many
steps as the rest of the budget holds, the plan is fixed (before the first
checkpoint) and the schedule starts from its step 0, as in an epoch-bounded
run of that length. Ten steps are a short sample of a noisy machine (the
plan of a 10-minute run on 2 cores came out up to 22 % long), so the plan is
measured **once more**, over every step since the one-off costs, at the
last step whose learning rate (and every earlier one) does not depend on
the run's length (:func:`refine_at`): the end of the warm-up for
``cosine`` and ``onecycle``, the end of the first epoch for ``constant``
and for ``step`` (its first milestone if that comes sooner), never past the
end of the first epoch. There the length is
predicted again (:func:`refine_budget`) and fixed for good; the warm-up
keeps the steps it was planned with, so no step already taken would have
had another learning rate. ``epochs`` (the recipe's unless given) still caps the
run: whichever ends first. Evaluation is not part of the budget: under a
time budget the run evaluates once, at its end (``eval_every > 0``), after
the budget; per-epoch checkpoint writes are not predicted either (well under
a second each for HA-CNN). Both measurements end within the first epoch,
so the first checkpoint holds the final plan, and a resumed run continues
that saved plan: it is never measured again.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .config import TrainConfig

SCHEDULES = ("constant", "step", "cosine", "onecycle")
MEASURE_SKIP = 3          # steps with one-off costs, left out of the step time
MEASURE_STEPS = 10        # steps timed after them
ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 25.0, 1e4   # OneCycleLR's div_factor, final_div_factor
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


class BudgetError(ValueError):
    """The time budget cannot hold the run (shorter than a step, or used up by the measurement)."""


def parse_duration(text: str) -> float:
    """Seconds in ``"90s"``, ``"20m"``, ``"1.5h"`` or plain seconds (``"300"``); must be positive."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*", str(text).lower())
    seconds = float(match[1]) * _UNITS[match[2]] if match else 0.0
    if seconds <= 0:
        raise ValueError(f"expected a positive duration such as 90s, 20m, 1.5h or a number of "
                         f"seconds; got {text!r}")
    return seconds


# ----------------------------------------------------------------------------- the plan

def measure_window(steps_per_epoch: int) -> tuple[int, int]:
    """``(skip, end)``: steps ``skip..end-1`` are timed; the plan is fixed after step ``end``
    (within the first epoch, so the first checkpoint already holds it)."""
    end = min(MEASURE_SKIP + MEASURE_STEPS, steps_per_epoch)
    return min(MEASURE_SKIP, end - 1), end


def _warmup_steps(fraction: float, scheduled: int) -> int:
    if fraction == 0 or scheduled < 2:
        return 0
    return min(max(1, round(fraction * scheduled)), scheduled - 1)


def make_plan(cfg: TrainConfig, steps_per_epoch: int | None, *, budget_steps: int | None = None,
              step_time_s: float | None = None) -> dict:
    """The plan of a run of ``cfg`` over a loader of ``steps_per_epoch`` batches.

    Without ``cfg.time_budget``: ``cfg.epochs`` epochs. With it: the
    provisional plan of the measurement (``budget_steps=None``: its length
    is not known yet), or the fixed plan for ``budget_steps`` predicted
    steps, capped at ``cfg.epochs`` epochs. Keys: ``schedule``, ``gamma``,
    ``bound`` ("epochs" or "time": what ends the run), ``total_steps``
    (``T``), ``epochs`` (``ceil(T / steps_per_epoch)``; the last one may be
    partial), ``steps_per_epoch``, ``offset`` (measurement steps at lr 0),
    ``warmup_steps`` (``W``), ``milestone_steps`` (counted from ``offset``),
    ``time_budget_s``, ``step_time_s`` (measured) and ``refine_at`` (the
    step count at which a time budget's plan is measured once more, None
    once it is final: :func:`refine_at`).
    """
    budget = cfg.time_budget
    if steps_per_epoch is None:
        if cfg.schedule != "constant" or cfg.warmup or budget is not None:
            raise ValueError(f"schedule={cfg.schedule!r}, a warm-up or a time budget plans the run in "
                             "optimisation steps: the training loader needs a length (len(loader))")
        return {"schedule": cfg.schedule, "gamma": cfg.gamma, "bound": "epochs", "total_steps": None,
                "epochs": cfg.epochs, "steps_per_epoch": None, "offset": 0, "warmup_steps": 0,
                "milestone_steps": [], "time_budget_s": None, "step_time_s": None}
    cap = cfg.epochs * steps_per_epoch
    if budget is None:
        total, offset, bound = cap, 0, "epochs"
        milestones = [e * steps_per_epoch for e in cfg.milestone_epochs]
    else:
        offset = measure_window(steps_per_epoch)[1]
        total = None if budget_steps is None else min(cap, budget_steps)
        bound = "epochs" if budget_steps is not None and budget_steps >= cap else "time"
        milestones = [] if total is None else \
            sorted({max(1, round(m * (total - offset))) for m in cfg.milestones})
    scheduled = None if total is None else total - offset
    plan = {"schedule": cfg.schedule, "gamma": cfg.gamma, "bound": bound, "total_steps": total,
            "epochs": cfg.epochs if not total else -(-total // steps_per_epoch),   # 0: an empty loader
            "steps_per_epoch": steps_per_epoch, "offset": offset,
            "warmup_steps": 0 if scheduled is None else _warmup_steps(cfg.warmup, scheduled),
            "milestone_steps": milestones, "time_budget_s": budget, "step_time_s": step_time_s,
            "refine_at": None}
    if budget is not None and total is not None:
        plan["refine_at"] = refine_at(plan)
    return plan


def refine_at(plan: dict) -> int | None:
    """The step count after which a time budget's plan is measured once more (None: final).

    The last step, within the first epoch and before the run's end, up to
    which no learning rate depends on the run's length: the end of the
    warm-up for ``cosine`` and ``onecycle`` (their decay spans the whole
    run), the first milestone for ``step``, anywhere for ``constant``.
    None when that leaves no step beyond the first measurement.
    """
    offset, total = plan["offset"], plan["total_steps"]
    length_free = {"cosine": offset + plan["warmup_steps"], "onecycle": offset + plan["warmup_steps"],
                   "step": offset + min(plan["milestone_steps"], default=total),
                   "constant": total}[plan["schedule"]]
    step = min(length_free, plan["steps_per_epoch"], total - 1)
    return step if step > offset else None


def predict_total_steps(step_ends: Sequence[float], start: float, budget_s: float,
                        skip: int = MEASURE_SKIP) -> tuple[int, float]:
    """``(total steps, seconds per step)`` that fit ``budget_s`` seconds from ``start``.

    ``step_ends[i]``: clock time at the end of step ``i`` (the steps done so
    far). The step time is the mean over steps ``skip..`` (the first
    ``skip`` carry one-off costs); the steps done count, and the rest of the
    budget holds ``floor(rest / step time)`` more. Raises
    :class:`BudgetError` when the budget is shorter than one measured step.
    """
    n = len(step_ends)
    if not 0 <= skip < n:
        raise ValueError(f"need more than skip={skip} timed steps, got {n}")
    t0 = step_ends[skip - 1] if skip else start
    step_s = max((step_ends[-1] - t0) / (n - skip), 1e-9)
    if budget_s < step_s:
        raise BudgetError(f"the time budget ({budget_s:.3g} s) is shorter than one training step "
                          f"({step_s:.3g} s measured): give at least a few steps' time")
    rest = budget_s - (step_ends[-1] - start)
    return n + max(0, math.floor(rest / step_s)), step_s


def plan_budget(cfg: TrainConfig, steps_per_epoch: int, step_ends: Sequence[float],
                start: float) -> dict:
    """The fixed plan of a time-budget run after its measurement steps (see the module doc)."""
    skip, end = measure_window(steps_per_epoch)
    total, step_s = predict_total_steps(step_ends, start, cfg.time_budget, skip)
    if total <= end:
        used = step_ends[-1] - start
        raise BudgetError(f"the time budget ({cfg.time_budget:.3g} s) was used up by the {end} steps "
                          f"that measure the throughput ({used:.3g} s, {step_s:.3g} s per step); "
                          f"give at least {used + 10 * step_s:.3g} s")
    return make_plan(cfg, steps_per_epoch, budget_steps=total, step_time_s=step_s)


def refine_budget(cfg: TrainConfig, plan: dict, step_ends: Sequence[float], start: float) -> dict:
    """The final plan of a time-budget run, measured again after ``plan["refine_at"]`` steps.

    The step time is the mean over every step since the one-off costs
    (:func:`predict_total_steps` on all of ``step_ends``); the warm-up keeps
    the steps of ``plan`` (the steps taken followed it), milestones do not
    move before the steps taken, and the run is at least one step longer
    than its warm-up and the steps taken (a budget already spent ends at the
    next step: the decay cannot be drawn in no time).
    """
    skip = measure_window(plan["steps_per_epoch"])[0]
    done, offset, warmup = len(step_ends), plan["offset"], plan["warmup_steps"]
    total, step_s = predict_total_steps(step_ends, start, cfg.time_budget, skip)
    new = make_plan(cfg, plan["steps_per_epoch"], budget_steps=max(total, done + 1, offset + warmup + 1),
                    step_time_s=step_s)
    new["warmup_steps"] = warmup
    new["milestone_steps"] = sorted({max(m, done - offset) for m in new["milestone_steps"]})
    new["refine_at"] = None
    return new


# ----------------------------------------------------------------------------- the schedule

def lr_at(step: int, plan: dict, peak: float) -> float:
    """Learning rate of optimisation step ``step`` (0-based) of ``plan`` at peak lr ``peak``."""
    u = step - plan["offset"]
    if u < 0:
        return 0.0                                       # time-budget measurement steps
    name, w = plan["schedule"], plan["warmup_steps"]
    if name == "constant" and not w:
        return peak
    if plan["total_steps"] is None:
        raise ValueError("the plan's length is not fixed yet (time budget still measuring)")
    t = plan["total_steps"] - plan["offset"]             # scheduled steps
    u = min(u, t)
    if name == "onecycle":
        low = peak / ONECYCLE_DIV
        if u < w:
            return low + (peak - low) * (1 - math.cos(math.pi * u / w)) / 2
        end = low / ONECYCLE_FINAL_DIV
        return end + (peak - end) * (1 + math.cos(math.pi * (u - w) / (t - w))) / 2
    if u < w:
        return peak * (u + 1) / w
    if name == "cosine":
        return peak * (1 + math.cos(math.pi * (u - w) / (t - w))) / 2
    lr = peak
    for m in plan["milestone_steps"]:                    # "step": as MultiStepLR, one x gamma at a time
        if u >= m:
            lr *= plan["gamma"]
    return lr


class RunSchedule(torch.optim.lr_scheduler.LRScheduler):
    """:func:`lr_at` of ``plan`` as a PyTorch scheduler: call ``step()`` after every optimiser step."""

    def __init__(self, optimizer: torch.optim.Optimizer, plan: dict, last_epoch: int = -1):
        self.plan = dict(plan)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [lr_at(self.last_epoch, self.plan, base) for base in self.base_lrs]

    def restart(self, plan: dict, step: int) -> None:
        """Continue ``plan`` at ``step`` (a resume, or the fixed plan of a time budget)."""
        self.plan, self.last_epoch = dict(plan), step
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    steps_per_epoch: int | None = 1) -> RunSchedule:
    """The :class:`RunSchedule` of ``cfg`` (provisional under a time budget, see :func:`make_plan`).

    ``steps_per_epoch=1`` (default) steps it once per epoch.
    """
    return RunSchedule(optimizer, make_plan(cfg, steps_per_epoch))
