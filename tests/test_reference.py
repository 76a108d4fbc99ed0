"""The reference protocol's plan and tables (hacnn.reference): what runs, in what order, and
the paired statistics checked against hand-worked numbers."""
import math

import pandas as pd
import pytest

from hacnn.experiment import VARIANTS
from hacnn.reference import (CURVES, LADDER, REFERENCE, SWEEP, Protocol, format_table,
                             paired_table, plan)


def test_plan_holds_every_ladder_and_sweep_run_once_curves_first_seed_by_seed():
    runs = plan(REFERENCE)
    assert len(runs) == len(set(runs))
    want = {(v, REFERENCE.misalignment, s) for v in LADDER for s in REFERENCE.seeds} | \
        {(v, m, s) for v in SWEEP for m in REFERENCE.misalignments for s in REFERENCE.seeds}
    assert set(runs) == want
    assert len(runs) == 30            # 5 ladder + 1 stripes at 0.25, 2 x 2 off it; x 3 seeds
    # the learning-curve variants come first, every one of them at seed 0 before seed 1
    head = runs[:len(CURVES) * len(REFERENCE.seeds)]
    assert {v for v, _, _ in head} == set(CURVES)
    assert [s for _, _, s in head] == [s for s in REFERENCE.seeds for _ in CURVES]
    assert all(v in VARIANTS for v, _, _ in runs)


def test_protocol_rejects_what_it_cannot_run():
    with pytest.raises(ValueError, match="epochs >= 1"):
        Protocol(epochs=0)
    with pytest.raises(ValueError, match="seed"):
        Protocol(seeds=())
    with pytest.raises(ValueError, match="sweep's"):
        Protocol(misalignment=0.3)
    assert REFERENCE.train_settings() == dict(epochs=8, eval_every=2, lr=1e-3, amp="none")


def test_paired_table_pairs_by_seed_against_a_hand_worked_interval():
    # base 10, 20, 30; other 12, 21, 33 (rows shuffled): differences 2, 1, 3 -> mean 2, sd 1,
    # half-width t(0.975, 2) / sqrt(3) = 4.302653 / 1.732051 = 2.484138
    df = pd.DataFrame([
        {"variant": "other", "seed": 2, "Rank-1": 33.0, "mAP": 1.0},
        {"variant": "full HA-CNN", "seed": 0, "Rank-1": 10.0, "mAP": 1.0},
        {"variant": "other", "seed": 0, "Rank-1": 12.0, "mAP": 1.0},
        {"variant": "full HA-CNN", "seed": 2, "Rank-1": 30.0, "mAP": 1.0},
        {"variant": "full HA-CNN", "seed": 1, "Rank-1": 20.0, "mAP": 1.0},
        {"variant": "other", "seed": 1, "Rank-1": 21.0, "mAP": 1.0},
    ])
    t = paired_table(df).set_index("variant")
    assert t.loc["other", "Rank-1"] == pytest.approx(22.0)
    assert t.loc["other", "Rank-1 sd"] == pytest.approx(math.sqrt(((12 - 22) ** 2 + 1 + 11 ** 2) / 2))
    assert t.loc["other", "Rank-1 diff"] == pytest.approx(2.0)
    assert t.loc["other", "Rank-1 low"] == pytest.approx(2 - 2.484138, abs=1e-6)
    assert t.loc["other", "Rank-1 high"] == pytest.approx(2 + 2.484138, abs=1e-6)
    assert not t.loc["other", "Rank-1 significant"]            # the interval holds 0
    assert t.loc["other", "mAP diff"] == 0 and not t.loc["other", "mAP significant"]
    assert math.isnan(t.loc["full HA-CNN", "Rank-1 diff"])
    text = format_table(paired_table(df)).set_index("variant")
    assert text.loc["other", "Rank-1 - full HA-CNN [95 % CI]"] == "+2.0 [-0.5, +4.5]"
    assert text.loc["full HA-CNN", "Rank-1 - full HA-CNN [95 % CI]"] == "baseline"
    assert text.loc["full HA-CNN", "Rank-1 (%)"] == "20.0 +- 10.0"


def test_paired_table_wants_one_epoch():
    df = pd.DataFrame([{"variant": "full HA-CNN", "seed": 0, "epoch": e, "Rank-1": 1.0, "mAP": 1.0}
                       for e in (2, 4)])
    with pytest.raises(ValueError, match="one epoch"):
        paired_table(df)
