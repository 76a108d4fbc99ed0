"""hacnn.reproduce: results table, run cache, papermill runner and failure reporting; notebooks'
parameters cells."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import papermill
import pytest

from hacnn.paper import PAPER_RESULTS, paper_result
from hacnn.reproduce import (NOT_RUN, NOT_RUN_NO_DATA, SYNTHETIC_NOTE, NotebookFailed, cached_run,
                             config_hash, gather_results, notebook_sequence, reproduce, results_table,
                             run_config, run_notebook, to_markdown, training_settings, write_results)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


# ----------------------------------------------------------------------------- the paper's numbers

def test_paper_numbers_are_the_published_ones():
    got = {k: (r.rank1, r.mAP) for k, r in PAPER_RESULTS.items()}
    assert got == {"market1501-sq": (91.2, 75.7), "market1501-mq": (93.8, 82.8),
                   "dukemtmcreid": (80.5, 63.8), "cuhk03-labeled": (44.4, 41.0),
                   "cuhk03-detected": (41.7, 38.6)}
    with pytest.raises(KeyError, match="market1501-sq"):
        paper_result("viper")


# ----------------------------------------------------------------------------- results table

def test_results_table_paper_vs_ours_and_rows_that_did_not_run():
    ours = {"market1501-sq": {"rank1": 0.8123, "mAP": 0.6049}}
    available = {"market1501-sq": True, "market1501-mq": True, "dukemtmcreid": False}
    df = results_table(ours, available, {"tiny, 8 epochs": {"rank1": 0.5, "mAP": 0.25}})
    rows = {(r["benchmark"], r["protocol"]): r for r in df.to_dict("records")}
    market = rows[("Market-1501", "single-query")]
    assert (market["paper Rank-1"], market["paper mAP"]) == ("91.2", "75.7")
    assert (market["ours Rank-1"], market["ours mAP"]) == ("81.2", "60.5")
    # data found but not evaluated (multi-query) vs data absent: never a number
    assert rows[("Market-1501", "multi-query")]["ours Rank-1"] == NOT_RUN
    for key in ("dukemtmcreid", "cuhk03-labeled", "cuhk03-detected"):
        r = PAPER_RESULTS[key]
        row = rows[(r.benchmark, r.protocol)]
        assert row["ours Rank-1"] == row["ours mAP"] == NOT_RUN_NO_DATA
    synthetic = rows[("Synthetic (ours)", "tiny, 8 epochs")]
    assert (synthetic["ours Rank-1"], synthetic["ours mAP"]) == ("50.0", "25.0")
    assert synthetic["paper Rank-1"] == "-" and synthetic["note"] == SYNTHETIC_NOTE
    assert len(df) == len(PAPER_RESULTS) + 1


def test_results_table_without_any_run_has_no_number():
    df = results_table({})
    assert set(df["ours Rank-1"]) == set(df["ours mAP"]) == {NOT_RUN_NO_DATA}


def test_gather_and_write_results(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "06_training.json").write_text(json.dumps(
        {"label": "tiny, quick preset, 8 epochs", "benchmarks": {"synthetic": {"rank1": 0.6, "mAP": 0.3}}}))
    (run / "06_training-cuhk03-detected.json").write_text(json.dumps(
        {"benchmarks": {"cuhk03-detected": {"rank1": 0.424, "mAP": 0.409}}}))
    (run / "09_ablations.json").write_text(json.dumps(
        {"tables": {"Ablations": [{"variant": "full HA-CNN", "Rank-1": "60.0 ± 1.0"}]}}))
    df, sections = gather_results(run, data_root=tmp_path / "no-data-here")
    synthetic = df[df["protocol"] == "tiny, quick preset, 8 epochs"].iloc[0]
    assert (synthetic["ours Rank-1"], synthetic["ours mAP"]) == ("60.0", "30.0")
    assert df[df["benchmark"] == "CUHK03 labeled"].iloc[0]["ours Rank-1"] == NOT_RUN_NO_DATA
    detected = df[df["benchmark"] == "CUHK03 detected"].iloc[0]
    assert (detected["ours Rank-1"], detected["ours mAP"]) == ("42.4", "40.9")
    assert "full HA-CNN" in sections[0]
    paths = write_results(df, [tmp_path / "a", tmp_path / "b"], sections)
    assert [p.name for p in paths] == ["results.csv", "results.md"] * 2
    md = (tmp_path / "b" / "results.md").read_text()
    assert to_markdown(df) in md and "| Synthetic (ours) |" in md and "not comparable" in md


# ----------------------------------------------------------------------------- run cache

def test_run_config_resolves_presets_and_hashes_switches():
    quick = run_config("synthetic", quick=True, seed=0)
    assert quick["train"]["epochs"] == 4 and quick["data"]["synthetic"]["size"] == "small"
    assert quick == run_config("synthetic", quick=True, seed=0, recipe="adam-triplet", epochs=None)
    assert quick["train"]["triplet_weight"] == 1.0 and quick["model"]["init"] == "pytorch"   # the defaults
    assert config_hash(quick) == config_hash(run_config("synthetic", quick=True, seed=0))
    other = run_config("synthetic", quick=True, seed=0, model={"hard_attention": False})
    assert config_hash(other) != config_hash(quick)
    assert config_hash(run_config("synthetic", quick=True, seed=1)) != config_hash(quick)


def test_training_settings_of_notebook_06_follow_the_recipe():
    assert training_settings() == dict(dataset="synthetic", quick=True, seed=0, recipe="adam-triplet", epochs=None)
    full = {r: training_settings(quick=False, recipe=r) for r in ("adam", "adam-triplet", "adam-cosine", "sgd")}
    assert {r: f["lr"] for r, f in full.items()} == {"adam": 1e-3, "adam-triplet": 1e-3,   # constant Adam
                                                     "adam-cosine": None, "sgd": None}     # their own
    assert full["adam-triplet"]["synthetic_size"] == "default" and full["adam-triplet"]["epochs"] == 2
    assert training_settings("market1501", quick=False, epochs=7) == dict(
        dataset="market1501", seed=0, recipe="adam-triplet", epochs=7)              # the recipe's schedule
    with pytest.raises(ValueError, match="quick=True trains on the synthetic"):
        training_settings("market1501", quick=True)


def test_run_config_keys_new_fields_only_away_from_their_neutral_values():
    """A run of the adam recipe (cross-entropy alone) keeps the key it had before the triplet fields."""
    base = run_config("synthetic", quick=True, seed=0, recipe="adam")
    assert {"compile", "triplet_weight", "triplet_margin", "data_cache"}.isdisjoint(base["train"])
    assert run_config("synthetic", quick=True, seed=0, recipe="adam", compile=False, triplet_weight=0.0) == base
    tri = run_config("synthetic", quick=True, seed=0, recipe="adam", triplet_weight=1.0)
    assert tri["train"]["triplet_weight"] == 1.0 and tri["train"]["triplet_margin"] == 0.3
    default = run_config("synthetic", quick=True, seed=0)                  # adam-triplet: keyed with its weight
    assert default["train"]["triplet_weight"] == 1.0 and config_hash(default) != config_hash(tri)  # recipe name
    assert run_config("synthetic", quick=True, seed=0, triplet_weight=0.0)["train"].keys() == base["train"].keys()
    assert len({config_hash(c) for c in (base, tri, default,
                                         run_config("synthetic", quick=True, seed=0, recipe="adam", compile=True),
                                         run_config("synthetic", quick=True, seed=0, recipe="adam",
                                                    triplet_weight=1.0, triplet_margin=0.2))}) == 5


@pytest.mark.parametrize("native", [True, False])
def test_run_config_keys_the_precision_the_device_will_run(monkeypatch, native):
    import hacnn.training

    monkeypatch.setattr(hacnn.training, "bf16_training_pays", lambda device=None: native)
    assert run_config("synthetic", quick=True)["train"]["amp"] is None          # the quick preset: fp32
    auto = run_config("synthetic", epochs=2)["train"]["amp"]
    assert auto == ("bf16" if native else None)
    assert run_config("synthetic", epochs=2, device="cuda")["train"]["amp"] is None
    resolved = "bf16" if native else "none"              # "auto" is keyed as what it resolves to
    assert config_hash(run_config("synthetic", epochs=2)) == config_hash(run_config("synthetic", epochs=2, amp=resolved))
    assert config_hash(run_config("synthetic", epochs=2, amp="bf16")) != \
        config_hash(run_config("synthetic", epochs=2, amp="none"))


def test_run_cache_key_separates_kernel_paths(monkeypatch):
    """A run made under another oneDNN ISA limit, ATen ISA or thread count is another cache entry."""
    import torch

    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(var, raising=False)
    base = run_config("synthetic", quick=True)
    assert base["kernel"]["onednn_max_isa"] is None and base["kernel"]["threads"] == torch.get_num_threads()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    avx2 = run_config("synthetic", quick=True)
    assert avx2["kernel"]["onednn_max_isa"] == "AVX2" and config_hash(avx2) != config_hash(base)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert config_hash(run_config("synthetic", quick=True)) != config_hash(base)
    monkeypatch.undo()
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(var, raising=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert config_hash(run_config("synthetic", quick=True)) != config_hash(base)
    finally:
        torch.set_num_threads(threads)
    assert config_hash(run_config("synthetic", quick=True)) == config_hash(base)


def test_cached_run_loads_a_finished_run_without_training(tmp_path, monkeypatch):
    import hacnn.experiment

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must be loaded, not retrained")
    monkeypatch.setattr(hacnn.experiment, "run_experiment", no_training)
    config = run_config("synthetic", quick=True, seed=0)
    folder = tmp_path / f"synthetic-{config_hash(config)}"
    folder.mkdir()
    history = [{"epoch": 1, "loss": 3.0, "mAP": None}, {"epoch": 2, "loss": 2.0, "rank1": 0.5, "mAP": 0.25}]
    (folder / "log.json").write_text(json.dumps({"status": "finished", "epochs": history}))
    (folder / "cache.json").write_text(json.dumps(config, default=str))
    (folder / "last.pth").write_bytes(b"weights")
    run = cached_run("synthetic", quick=True, seed=0, cache=tmp_path)
    assert run.reused and run.out_dir == folder and run.final["mAP"] == 0.25 and len(run.history) == 2


# ----------------------------------------------------------------------------- runner, failures

def _tiny_notebook(path: Path, fail: bool) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("quick = True\nvalue = 1")
    params.metadata["tags"] = ["parameters"]
    cells = [params, nbformat.v4.new_code_cell("print('value is', value)")]
    if fail:
        cells.append(nbformat.v4.new_code_cell("raise ValueError('deliberate failure')"))
    cells.append(nbformat.v4.new_code_cell("print('not reached' if False else 'end')"))
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_failing_notebook_is_reported_and_its_partial_output_kept(tmp_path, capsys):
    good = _tiny_notebook(tmp_path / "01_good.ipynb", fail=False)
    bad = _tiny_notebook(tmp_path / "02_bad.ipynb", fail=True)
    out = tmp_path / "run"
    # only the declared parameters are passed; "results_dir" etc. are not injected
    executed = run_notebook(good, out / good.name, {"value": 7, "results_dir": "x"})
    text = executed.read_text()
    assert "value is 7" in text and "results_dir" not in text
    with pytest.raises(NotebookFailed) as err:
        run_notebook(bad, out / bad.name, {"value": 2})
    assert err.value.notebook == "02_bad.ipynb" and err.value.ename == "ValueError"
    assert err.value.cell_index == 3          # 0 parameters, 1 injected parameters, 2 print, 3 raise
    partial = nbformat.read(out / bad.name, as_version=4)
    assert any("value is 2" in "".join(o.get("text", "")) for c in partial.cells for o in c.get("outputs", []))
    # the whole job: stops at the failing notebook, names it and its cell, exit code 1
    code = reproduce(tmp_path / "job", quick=True, notebooks=[good, bad], results_dir=None)
    printed = capsys.readouterr().out
    assert code == 1 and "02_bad.ipynb" in printed and "cell 3" in printed and "deliberate failure" in printed
    assert (tmp_path / "job" / "02_bad.ipynb").is_file()


# ----------------------------------------------------------------------------- notebooks

@pytest.mark.parametrize("notebook", notebook_sequence(NOTEBOOKS), ids=lambda p: p.name)
def test_every_notebook_starts_with_a_parameters_cell(notebook):
    nb = nbformat.read(notebook, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "code" and "parameters" in first.metadata.get("tags", [])
    names = {target.id for node in ast.parse(first.source).body if isinstance(node, ast.Assign)
             for target in node.targets}
    assert {"quick", "seed", "device", "figures_dir"} <= names, names
    # what `hacnn reproduce` passes is what papermill finds in the cell: a second "=" on a line (in a
    # comment, say) hides that parameter from it, and the notebook keeps its default
    assert set(papermill.inspect_notebook(str(notebook))) == names


def test_the_sequence_is_numbered_from_00():
    names = [p.name[:2] for p in notebook_sequence(NOTEBOOKS)]
    assert names == sorted(names) and names[0] == "00"


def test_notebook_06_trains_and_evaluates_your_own_folder(tmp_path):
    """Notebook 06 with dataset="folder" (issue 18): the reader's options reach the reader and the
    run cache, and the key numbers it writes are what evaluating its run's weights gives."""
    from fixtures import write_image
    from hacnn.experiment import evaluate_checkpoint

    root = tmp_path / "crops"
    for k in range(20):                      # 20 people, 6 crops each over 2 cameras: c<k>_<n>.jpg,
        for j in range(6):                   # each person a colour of their own (crops vary a little)
            write_image(root / f"person{k:02d}" / f"c{1 + j % 2}_{j}.jpg",
                        color=((37 * k + 3 * j) % 256, (91 * k + 60) % 256, (53 * k + 2 * j) % 256))
    # 16 training identities: the default P x K batch of 32 holds 16 identities x 2
    options = {"layout": "identity-folders", "pattern": r"c(?P<camera>\d)_.*", "test_ids": 4,
               "split_seed": 0}
    out = tmp_path / "out"
    run_notebook(NOTEBOOKS / "06_training.ipynb", out / "06.ipynb",
                 {"quick": False, "dataset": "folder", "data_root": str(root), "dataset_options": options,
                  "epochs": 3, "seed": 0, "out_dir": str(tmp_path / "cache"), "results_dir": str(out),
                  "figures_dir": str(tmp_path / "figures")}, cwd=NOTEBOOKS)
    info = json.loads((out / "06_training-folder.json").read_text())
    assert info["dataset"] == "folder" and info["epochs"] == 3
    (run_dir,) = (tmp_path / "cache").iterdir()
    assert json.loads((run_dir / "cache.json").read_text())["data"]["options"]["test_ids"] == 4
    again = evaluate_checkpoint(run_dir / "last.pth", "folder", root=root, dataset_options=options,
                                progress=False).row()
    for key in ("rank1", "mAP"):
        assert info["benchmarks"]["folder"][key] == pytest.approx(again[key], abs=1e-6)
    assert (tmp_path / "figures" / "06_training_curves_folder.png").is_file()
