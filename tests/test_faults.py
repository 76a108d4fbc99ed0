"""Faults and hostile files: SIGKILL mid-write, crafted pickles, worker-count-independent resume, memory.

- SIGKILL while ``atomic_save`` writes leaves the previous checkpoint loadable,
  and the leftover temp file is never taken for a checkpoint.
- A crafted pickle (``__reduce__`` -> ``os.system``) is refused with a clear
  :class:`CheckpointError` by every entry that loads weights, and its command
  never runs.
- Resume with a loader worker process continues exactly as an uninterrupted
  run (and as a run without workers): augmentation is a function of
  ``(seed, epoch, draw)``. SIGKILL-then-resume with ``workers=0`` is in
  ``tests/test_training.py``.
- A failed synthetic generation leaves nothing behind.
- Memory (RSS) stays flat over a few tiny epochs (the long version is
  ``benchmarks/bench_long_run.py``).
"""
from __future__ import annotations

import os
import pickle
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from hacnn.checkpoint import CheckpointError, atomic_save, load_model, safe_load

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"channels": (32, 64, 96), "feat_dim": 64, "input_size": (32, 16),
              "local_sizes": ((8, 8), (4, 4), (2, 2))}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- SIGKILL mid-write

WRITER = textwrap.dedent("""
    import sys, torch
    from hacnn.checkpoint import atomic_save
    blob = torch.empty(6_000_000)                       # 24 MB: each save takes a while
    for step in range(1, 100_000):
        blob.fill_(step)
        atomic_save({"step": step, "blob": blob}, sys.argv[1])
        print(step, flush=True)
""")


@pytest.mark.parametrize("delay_ms", [0, 7])
def test_sigkill_during_atomic_save_keeps_the_previous_checkpoint(tmp_path, delay_ms):
    target = tmp_path / "last.pth"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not target.exists():                       # one complete checkpoint first
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the writer never finished a save"
            time.sleep(0.005)
        while not list(tmp_path.glob(".last.pth.*.tmp")):  # then catch it mid-write
            assert time.monotonic() < deadline, "never saw a write in progress"
            time.sleep(0.0005)
        time.sleep(delay_ms / 1000)
    finally:
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    printed = [int(line) for line in out.split()]

    ckpt = safe_load(target)                             # loadable, and complete
    assert ckpt["step"] >= max(printed, default=1)
    assert ckpt["blob"].shape == (6_000_000,) and bool((ckpt["blob"] == ckpt["step"]).all())
    # the interrupted write is a hidden temp file: no *.pth besides the target
    assert [p.name for p in tmp_path.glob("*.pth")] == ["last.pth"]
    assert all(p.name.startswith(".last.pth.") and p.suffix == ".tmp"
               for p in tmp_path.iterdir() if p != target)


# ----------------------------------------------------------------------------- crafted pickles

class Payload:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _crafted(path: Path, marker: Path, form: str) -> Path:
    payload = Payload(marker)
    if form == "object":                  # torch.save of a custom object (zip archive)
        torch.save(payload, path)
    elif form == "hacnn-dict":            # a hacnn checkpoint whose weights are the payload
        torch.save({"format": "hacnn", "version": 1, "config": None, "model": payload}, path)
    elif form == "torchreid-dict":        # torchreid layout
        torch.save({"state_dict": payload, "epoch": 60}, path)
    elif form == "raw-pickle":            # a plain pickle file, no zip
        path.write_bytes(pickle.dumps(payload, protocol=2))
    return path


def _hub(path):
    return torch.hub.load(str(REPO), "hacnn", source="local", weights=str(path), trust_repo=True,
                          verbose=False)


def _cli(*argv):
    def run(path):
        from hacnn.__main__ import main
        code = main([a.format(path=path, out=path.with_name("converted.pth")) for a in argv])
        assert code == 1
        raise CheckpointError("(see stderr)")
    return run


ENTRIES = {
    "safe_load": safe_load,
    "load_model": load_model,
    "load_model-num_classes": lambda p: load_model(p, num_classes=10),
    "torch.hub.load": _hub,
    "cli-evaluate": _cli("evaluate", "--weights", "{path}", "--workers", "0", "--no-progress"),
    "cli-convert-from-torchreid": _cli("convert", "--from-torchreid", "{path}", "--out", "{out}"),
    "cli-convert-to-torchreid": _cli("convert", "--to-torchreid", "{path}", "--out", "{out}"),
}
FORMS = ("object", "hacnn-dict", "torchreid-dict", "raw-pickle")


def test_crafted_payload_is_live(tmp_path):
    """The payload does run when unpickled without weights_only (so the refusals below matter)."""
    marker = tmp_path / "pwned"
    path = _crafted(tmp_path / "evil.pth", marker, "object")
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("entry", list(ENTRIES))
def test_crafted_pickle_is_refused_and_never_runs(tmp_path, capsys, entry, form):
    marker = tmp_path / "pwned"
    path = _crafted(tmp_path / "evil.pth", marker, form)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CheckpointError) as info:
        ENTRIES[entry](path)
    message = str(info.value) if not entry.startswith("cli") else capsys.readouterr().err
    assert f"refusing to load {path}" in message and "weights_only=True" in message, message
    assert "Traceback" not in message
    assert not marker.exists(), "the crafted pickle ran"
    assert sorted(p.name for p in tmp_path.iterdir()) == before   # no converted.pth written


def test_crafted_pickle_refused_by_the_cli_process(tmp_path):
    """``python -m hacnn evaluate --weights`` as a user runs it: exit 1, one line, no marker."""
    marker = tmp_path / "pwned"
    path = _crafted(tmp_path / "evil.pth", marker, "object")
    proc = subprocess.run([sys.executable, "-m", "hacnn", "evaluate", "--weights", str(path),
                           "--workers", "0", "--no-progress"], env=ENV, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"hacnn evaluate: error: refusing to load {path}")
    assert "Traceback" not in proc.stderr and not marker.exists()


def test_no_unsafe_torch_load_in_the_package():
    """Every torch.load call in the package and hubconf passes weights_only=True."""
    calls = []
    for file in [*sorted((REPO / "hacnn").rglob("*.py")), REPO / "hubconf.py"]:
        for number, line in enumerate(file.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if "torch.load(" in code and "``" not in code:
                calls.append((file.name, number, "weights_only=True" in code))
    assert calls and all(ok for *_, ok in calls), calls


# ----------------------------------------------------------------------------- resume with workers

@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory):
    from hacnn.data import build_dataset
    root = tmp_path_factory.mktemp("synthetic")
    build_dataset("synthetic", root, size="tiny", workers=1)
    return root


def _run(root, out, workers, epochs, resume=False):
    from hacnn.experiment import run_experiment
    return run_experiment("synthetic", out, root=root, model=TINY_MODEL, workers=workers,
                          epochs=epochs, eval_every=0, lr=1e-3, resume=resume, progress=False,
                          verbose=False)


@pytest.mark.filterwarnings("error::UserWarning")
def test_resume_with_a_loader_worker_reproduces_the_uninterrupted_run(tiny_synthetic, tmp_path):
    """Epoch 2 after a resume (a fresh worker process) draws what the uninterrupted run drew."""
    straight = _run(tiny_synthetic, tmp_path / "straight", workers=1, epochs=2)
    _run(tiny_synthetic, tmp_path / "resumed", workers=1, epochs=1)
    resumed = _run(tiny_synthetic, tmp_path / "resumed", workers=1, epochs=2, resume=True)
    no_workers = _run(tiny_synthetic, tmp_path / "no_workers", workers=0, epochs=2)
    assert len(straight.history) == len(resumed.history) == 2
    for other in (resumed, no_workers):
        for key in ("loss", "loss_global", "loss_local", "acc_global", "acc_local"):
            assert [r[key] for r in other.history] == [r[key] for r in straight.history], key
        a = safe_load(tmp_path / "straight" / "last.pth")["model"]
        b = safe_load(other.out_dir / "last.pth")["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- synthetic failure

def test_failed_synthetic_generation_leaves_nothing(tmp_path, monkeypatch):
    from hacnn.data import synthetic, synthetic_scene

    calls = []

    def fail_on_the_20th(*args, **kwargs):
        calls.append(1)
        if len(calls) == 20:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    real = synthetic_scene.render_image
    monkeypatch.setattr(synthetic.C, "render_image", fail_on_the_20th)
    parent = tmp_path / "data"
    parent.mkdir()
    with pytest.raises(OSError, match="disk full"):
        synthetic.generate_synthetic(parent / "synth", size="tiny", workers=1)
    assert list(parent.iterdir()) == []                  # no benchmark, no hidden temp folder


# ----------------------------------------------------------------------------- memory

def test_rss_stays_flat_over_tiny_epochs(tiny_synthetic, tmp_path):
    """6 tiny epochs: median RSS of the last 3 within 50 MiB of epochs 2-3 (after warm-up)."""
    result = _run(tiny_synthetic, tmp_path / "rss", workers=0, epochs=6)
    rss = [row["rss_mb"] for row in result.history]
    assert len(rss) == 6 and all(r > 0 for r in rss)
    early, late = statistics.median(rss[1:3]), statistics.median(rss[3:])
    assert late - early < 50, f"RSS grew from {early:.0f} to {late:.0f} MiB: {rss}"
    assert not all(b > a + 5 for a, b in zip(rss[1:], rss[2:])), f"RSS climbs every epoch: {rss}"


def test_atomic_save_writes_with_the_permissions_of_a_plain_open(tmp_path):
    """Not the temp file's 0600: a checkpoint or exported weights file others may read (umask)."""
    old = os.umask(0o022)
    try:
        atomic_save({"x": torch.ones(2)}, tmp_path / "a.pth")
        os.umask(0o077)
        atomic_save({"x": torch.ones(2)}, tmp_path / "b.pth")
    finally:
        os.umask(old)
    assert (tmp_path / "a.pth").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.pth").stat().st_mode & 0o777 == 0o600
    assert torch.equal(safe_load(tmp_path / "a.pth")["x"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "b.pth"]     # no temp file left
