"""benchmarks/bench_budget.py's arms and --combine: what each arm trains, and tables paired from
published summaries checked against a hand-worked interval."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from hacnn.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_budget", ROOT / "benchmarks" / "bench_budget.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torchreid_keeps_its_own_k_while_hacnn_takes_the_package_default(bench):
    _, _, _, hacnn = bench.parse_arm("hacnn/default")
    assert TrainConfig(**hacnn).num_instances == TrainConfig().num_instances == 2
    _, _, _, torchreid = bench.parse_arm("torchreid/adam")
    assert torchreid == {"recipe": "adam", "num_instances": 4}
    _, _, _, plain = bench.parse_arm("torchreid/adam/num_instances=1")      # an arm's own pair wins
    assert plain["num_instances"] == 1


def _summary(path: Path, arms: dict, machine="cpu X, 2 threads", seeds=(0, 1, 2)) -> Path:
    runs = {arm: {"runs": [{"rank1": r1, "mAP": r1 / 2, "steps": 100, "images_per_s": 50.0, "epochs": 2.0}
                           for r1 in values]} for arm, values in arms.items()}
    path.write_text(json.dumps({"command": "x", "machine": machine, "date": "2026-12-06", "budget_s": 600.0,
                                "dataset": "cuhk03-pair", "seeds": list(seeds), "arms": runs}))
    return path


def test_combine_pairs_arms_across_files_by_seed(bench, tmp_path, capsys):
    a = _summary(tmp_path / "a.json", {"torchreid/adam": [10.0, 20.0, 30.0], "hacnn/default": [0.0, 0.0, 0.0]})
    b = _summary(tmp_path / "b.json", {"hacnn/default/x": [12.0, 21.0, 33.0]})
    table = tmp_path / "t.md"
    bench.main(["--combine", str(a), str(b), "--arms", "torchreid/adam", "hacnn/default/x", "--table", str(table)])
    row = [line for line in table.read_text().splitlines() if line.startswith("| hacnn/default/x")][0]
    # differences 2, 1, 3: mean 2, sd 1, half-width t(0.975, 2) / sqrt(3) = 2.484; mAP is half of each
    assert "| 22.0 +- 10.5 |" in row and "+2.0 [-0.5, +4.5]" in row and "+1.0 [-0.2, +2.2]" in row
    assert "hacnn/default |" not in table.read_text()          # only the arms asked for
    # the same arm name in two files (e.g. hacnn/default under two package defaults): ARM@N picks
    c = _summary(tmp_path / "c.json", {"hacnn/default": [11.0, 22.0, 29.0]})
    bench.main(["--combine", str(a), str(c), "--arms", "torchreid/adam", "hacnn/default@2", "hacnn/default@1"])
    out = capsys.readouterr().out
    # differences 1, 2, -1: mean 0.67, sd 1.528, half-width 4.3027 * 1.528 / sqrt(3) = 3.795
    assert "| hacnn/default@2 | 20.7 +- 9.1 |" in out and "+0.7 [-3.1, +4.5]" in out
    assert "| hacnn/default@1 | 0.0 +- 0.0 |" in out


def test_combine_refuses_runs_of_another_machine_or_seeds(bench, tmp_path):
    a = _summary(tmp_path / "a.json", {"torchreid/adam": [10.0, 20.0, 30.0]})
    b = _summary(tmp_path / "b.json", {"hacnn/default": [1.0, 2.0, 3.0]}, machine="cpu Y, 2 threads")
    with pytest.raises(SystemExit, match="machine .*only runs of one machine"):
        bench.main(["--combine", str(a), str(b), "--arms", "torchreid/adam", "hacnn/default"])
    c = _summary(tmp_path / "c.json", {"hacnn/default": [1.0, 2.0]}, seeds=(0, 1))
    with pytest.raises(SystemExit, match="seeds"):
        bench.main(["--combine", str(a), str(c), "--arms", "torchreid/adam", "hacnn/default"])
    with pytest.raises(SystemExit, match="no file holds the arm 'hacnn/other'"):
        bench.main(["--combine", str(a), "--arms", "torchreid/adam", "hacnn/other"])
