"""The reference protocol's plan and tables (hacnn.reference): what runs, in what order, and
the paired statistics checked against hand-worked numbers."""
import json
import math

import pandas as pd
import pytest

from hacnn.experiment import VARIANTS
from hacnn.config import TrainConfig
from hacnn.reference import (CURVES, LADDER, REFERENCE, SWEEP, Protocol, format_table,
                             paired_table, plan)
from hacnn.reproduce import RECORDS, run_config


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
    assert REFERENCE.train_settings() == dict(epochs=8, eval_every=2, lr=1e-3, amp="none", num_instances=4)


def test_published_records_are_the_runs_of_the_protocols_training_settings():
    # The protocol pins K = 4 (the default when its 32 runs were published); the package default
    # moved to K = 2, which must not turn the committed records into cache misses (a 3-hour retrain).
    assert TrainConfig().num_instances != REFERENCE.num_instances == 4
    records = sorted(RECORDS.glob("*/cache.json"))
    assert len(records) == 32
    for path in records:
        saved = json.loads(path.read_text())["train"]
        want = run_config("synthetic", synthetic_size="small", seed=saved["seed"],
                          **REFERENCE.train_settings())["train"]
        assert saved == json.loads(json.dumps(want, default=str)), path.parent.name
    # ... which is the pin's doing: without it they would not be found
    unpinned = {k: v for k, v in REFERENCE.train_settings().items() if k != "num_instances"}
    default = run_config("synthetic", synthetic_size="small", seed=saved["seed"], **unpinned)["train"]
    assert saved != json.loads(json.dumps(default, default=str))


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


def test_settled_from_is_the_first_epoch_after_which_every_difference_excludes_zero():
    from hacnn.reference import settled_from

    # paired differences (other - full) per epoch: 2: {+1, -1, 0} (holds 0); 4: {5, 6, 7};
    # 6: {-1, 1, 3} (holds 0 again); 8: {4, 5, 6}; 10: {9, 10, 11} -> settled from epoch 8
    gaps = {2: (1, -1, 0), 4: (5, 6, 7), 6: (-1, 1, 3), 8: (4, 5, 6), 10: (9, 10, 11)}
    rows = []
    for epoch, d in gaps.items():
        for seed in range(3):
            rows += [{"variant": "full HA-CNN", "seed": seed, "epoch": epoch, "Rank-1": 10.0 * seed},
                     {"variant": "other", "seed": seed, "epoch": epoch, "Rank-1": 10.0 * seed + d[seed]}]
    first, last = settled_from(pd.DataFrame(rows), "other")
    assert first == 8
    assert last.mean == pytest.approx(10.0) and last.significant
    first, _ = settled_from(pd.DataFrame([r for r in rows if r["epoch"] <= 6]), "other")
    assert first is None


def test_summary_markdown_of_a_published_folder(tmp_path):
    import json

    from hacnn.reference import summary_markdown

    rows, sweep = [], []
    for epoch, gap in ((2, (1, -1, 0)), (4, (2, 1, 3))):     # "other" - full: holds 0, then +2 [-0.5, +4.5]
        for seed in range(3):
            rows += [{"variant": "full HA-CNN", "misalignment": 0.25, "seed": seed, "epoch": epoch,
                      "Rank-1": 10.0 * (seed + 1), "mAP": 5.0},
                     {"variant": "other", "misalignment": 0.25, "seed": seed, "epoch": epoch,
                      "Rank-1": 10.0 * (seed + 1) + gap[seed], "mAP": 5.0 + 10 * gap[seed]}]
    curves_df = pd.DataFrame(rows)
    last = curves_df[curves_df["epoch"] == 4]
    paired_table(last).to_csv(tmp_path / "ladder.csv", index=False)
    pd.concat([paired_table(last).assign(misalignment=m) for m in (0.0, 0.6)]).to_csv(
        tmp_path / "sweep.csv", index=False)
    curves_df.to_csv(tmp_path / "curves.csv", index=False)
    protocol = {**REFERENCE.to_dict(), "epochs": 4}
    (tmp_path / "provenance.json").write_text(json.dumps({
        "finished": "2026-12-02", "command": "python -m hacnn reproduce --reference", "commit": "abc",
        "machine": {"cpu": "a CPU", "threads": 2, "torch": "2.14.1", "gpu": None},
        "train seconds (sum over runs, when each was trained)": 7200.0, "protocol": protocol,
        "runs": [{"variant": "full HA-CNN", "benchmark": "default", "seed": 0, "rank1": 0.5, "mAP": 0.25,
                  "cpu": "CPU B"}] + [{"variant": "other", "benchmark": "small", "seed": s, "rank1": 0.1,
                                       "mAP": 0.1, "cpu": "CPU A"} for s in range(3)]}))
    text = summary_markdown(tmp_path)
    assert "| other | 3 | 22.0 +- 10.5 | +2.0 [-0.5, +4.5] | 25.0 +- 10.0 | +20.0 [-4.8, +44.8] |" in text
    assert "Rank-1, other - full HA-CNN: +2.0 [-0.5, +4.5] at epoch 4; beyond seed noise at no evaluated epoch" in text
    assert "mAP, other - full HA-CNN: +20.0 [-4.8, +44.8] at epoch 4" in text
    assert "2.0 h of training" in text and "Rank-1 50.0 / mAP 25.0" in text
    assert text.count("| 0.6 |") == 2
    assert "trained on CPU B (1), CPU A (3) (all in fp32" in text


def test_a_published_run_is_loaded_from_its_record_when_the_cache_lacks_it(tmp_path, monkeypatch):
    import json

    import hacnn.experiment
    from hacnn.reproduce import cached_run, config_hash, record_run, run_config

    def no_training(*args, **kwargs):
        raise RuntimeError("trained")

    monkeypatch.setattr(hacnn.experiment, "run_experiment", no_training)
    settings = dict(synthetic_size="tiny", seed=3, epochs=2, lr=1e-3)
    config = run_config("synthetic", **settings)
    name = f"synthetic-{config_hash(config)}"
    history = [{"epoch": 1, "rank1": 0.25, "mAP": 0.2}, {"epoch": 2, "rank1": 0.5, "mAP": 0.4}]
    made = tmp_path / "cache" / name                      # a finished run of the cache, no weights
    made.mkdir(parents=True)
    (made / "log.json").write_text(json.dumps({"status": "finished", "epochs": history}))
    (made / "cache.json").write_text(json.dumps(config, default=str))
    records = tmp_path / "records"
    from hacnn.reproduce import CachedRun

    kept = record_run(CachedRun(made, history, history[-1], history[-1], config, False), records)
    assert kept == records / name and sorted(p.name for p in kept.iterdir()) == ["cache.json", "log.json"]

    empty = tmp_path / "empty-cache"
    r = cached_run("synthetic", cache=empty, records=records, **settings)
    assert r.reused and r.from_record and r.out_dir == kept
    assert r.final == history[-1] and r.best == history[-1]
    with pytest.raises(FileNotFoundError, match="keeps no weights"):
        r.weights
    # not looked up without records, nor for another configuration, nor when unfinished
    with pytest.raises(RuntimeError, match="trained"):
        cached_run("synthetic", cache=empty, records=None, **settings)
    with pytest.raises(RuntimeError, match="trained"):
        cached_run("synthetic", cache=empty, records=records, **{**settings, "seed": 4})
    (kept / "log.json").write_text(json.dumps({"status": "running", "epochs": history}))
    with pytest.raises(RuntimeError, match="trained"):
        cached_run("synthetic", cache=empty, records=records, **settings)


def test_a_record_made_on_another_machine_is_handed_out_with_its_own_kernel_path(tmp_path, monkeypatch):
    """A record is a published result: the same settings recorded under another kernel path (CPU
    model, threads) are loaded, their cache.json naming that machine; this kernel path's own
    record wins when both exist; another precision is another run."""
    import json

    import hacnn.experiment
    from hacnn.reproduce import cached_run, config_hash, run_config

    def no_training(*args, **kwargs):
        raise RuntimeError("trained")

    monkeypatch.setattr(hacnn.experiment, "run_experiment", no_training)
    settings = dict(synthetic_size="tiny", seed=3, epochs=2, lr=1e-3, amp="none")
    here = run_config("synthetic", **settings)
    records = tmp_path / "records"

    def record(config, rank1):
        out = records / f"synthetic-{config_hash(config)}"
        out.mkdir(parents=True)
        (out / "log.json").write_text(json.dumps({"status": "finished", "epochs": [
            {"epoch": 2, "rank1": rank1, "mAP": rank1 / 2}]}))
        (out / "cache.json").write_text(json.dumps(config, default=str))
        return out

    other = record({**here, "kernel": {**here["kernel"], "cpu": "Another CPU", "threads": 7}}, 0.5)
    r = cached_run("synthetic", cache=tmp_path / "cache", records=records, **settings)
    assert r.from_record and r.out_dir == other and r.final["rank1"] == 0.5
    assert r.config["kernel"]["cpu"] == "Another CPU" and r.config["kernel"]["threads"] == 7
    own = record(here, 0.75)
    r = cached_run("synthetic", cache=tmp_path / "cache", records=records, **settings)
    assert r.out_dir == own and r.final["rank1"] == 0.75
    with pytest.raises(RuntimeError, match="trained"):     # bf16: not the recorded fp32 runs
        cached_run("synthetic", cache=tmp_path / "cache", records=records, **{**settings, "amp": "bf16"})
