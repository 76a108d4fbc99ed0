"""hacnn.distributed: torchrun + DDP on CPU (gloo, 2 processes, 127.0.0.1 only).

The multi-process tests launch this file as a script under torchrun
(``python -m torch.distributed.run``; see ``_worker`` at the bottom) on a tiny
Market-1501-layout set of noise images (8 training identities x 8, a global
batch of 16 = 4 ids x 4, so 4 steps an epoch) and a reduced HA-CNN, one
thread per process, every subprocess with a timeout. ``make test`` keeps this
module on one pytest-xdist worker (``--dist loadscope``), so the module-scoped
runs that several tests compare are built once.

Why noise images, fixed stripes and NCHW in the runs that are compared with a
single process: with SyncBatchNorm and the mean loss, DDP's gradient average
over equal shards is the single-process gradient up to float summation order,
but some parts of HA-CNN amplify rounding differences into different
training: the bilinear sampling of the learned hard regions has a gradient
that jumps where a sampling point crosses a pixel (in fp32 its gradient
differs from fp64 by ~2 % at the stripe initialisation), oneDNN's
channels_last convolutions choose their algorithm by batch size, and the flat
colours of the synthetic images make near-ties in max-pooling. Without
them the per-step losses of 2 processes and of 1 agree to ~1e-7 (measured).
The same goes for the default recipe's batch-hard triplet loss: its max / min
picks jump between near-tied distances (the features of noise images are
alike), so these runs train the paper's cross-entropy alone
(``recipe="adam"``; with the triplet loss mined over the global batch the
epoch losses of 2 processes and of 1 agreed to 0.2 %, against 2.7 % mined
per process), and the triplet loss's 2-process mining is tested exactly, on
its own. And they start from Kaiming's init: from the default PyTorch init
the cross-entropy runs of 2 processes and of 1 agreed to 0.2 % per epoch
(measured), not 1e-5. Why is not yet traced (the same machinery matches to
1e-5 from Kaiming's init, so the average itself is right).

How close the two runs stay depends on the CPU's kernels: on the Intel Xeons
these tests were written on, the epoch losses of 2 processes and of 1 agreed
to 1e-5 and the resumed third epoch to 1e-3; on an AMD EPYC (Zen 4, 2026-12-02)
to 2.4e-3 (epoch 2) and 1.5 % (epoch 3 resumed), also with oneDNN switched off
(then 5.6e-3: not a oneDNN kernel choice). The tolerances below are those
measured spreads with a margin (:data:`EPOCH_RTOL`, :data:`RESUMED_RTOL`);
the exact parts (the same batches per rank, the optimiser state and plan
carried over, the triplet loss mined over both processes) are tested exactly.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hacnn import distributed
from hacnn.checkpoint import load_model, safe_load
from hacnn.data.loading import EpochKeyedSampler
from hacnn.data.sampler import RandomIdentitySampler
from hacnn.distributed import DistributedInitError, check_batch, env_world, shard_size

REPO = Path(__file__).resolve().parents[1]
MODEL = {"channels": (32, 64, 96), "feat_dim": 64, "input_size": (32, 16),
         "local_sizes": ((8, 8), (4, 4), (2, 2)), "hard_attention": False, "init": "kaiming"}
SETTINGS = dict(model=MODEL, recipe="adam", workers=0, eval_every=2, lr=1e-3, batch_size=16, num_instances=4,
                amp="none", channels_last=False, progress=False, verbose=False)
KEYS = ("loss", "loss_global", "loss_local", "acc_global", "acc_local")
EPOCH_RTOL = 1e-2        # 2 processes vs 1, per epoch (measured: 1e-5 Intel Xeon, 2.4e-3 AMD EPYC)
WEIGHT_RTOL = 1e-2       # the median weight tensor after epoch 2, relative (AMD EPYC: 1.8e-3)
RESUMED_RTOL = 5e-2      # the third epoch, resumed on the other world size (1e-3 Intel, 1.5e-2 AMD)

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::hacnn.data.DatasetCountWarning")]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in distributed.ENV_VARS}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str, nproc: int = 2, timeout: float = 150, wait: bool = True, log: Path | None = None,
              port: int | None = None, launcher: tuple[str, ...] = (), cwd: Path = REPO):
    """torchrun ``args`` (a script or ``-m module``); ``launcher``: more torchrun flags (``--nnodes`` ...)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *launcher,
           "--master_addr", "127.0.0.1", "--master_port", str(port or _free_port()), "--monitor-interval", "0.1",
           *args]
    if wait:
        return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=cwd)
    with open(log, "w") as f:
        return subprocess.Popen(cmd, env=_env(), stdout=f, stderr=subprocess.STDOUT, cwd=cwd)


def _run(root, out, **kw):
    from hacnn.experiment import run_experiment
    return run_experiment("market1501", out, root=root, **{**SETTINGS, **kw})


def _history(out: Path) -> list[dict]:
    return json.loads((out / "log.json").read_text())["epochs"]


def write_noise_market(root: Path) -> Path:
    """Market-1501 layout: 8 training ids x 8 noisy views of a random prototype; 4 query/gallery ids."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = root / "Market-1501-v15.09.15"
    frame = 0
    for pid in range(1, 13):
        proto = rng.uniform(0, 255, (32, 16, 3))
        for view in range(8 if pid <= 8 else 3):
            split = "bounding_box_train" if pid <= 8 else "query" if view == 0 else "bounding_box_test"
            frame += 1
            path = folder / split / f"{pid:04d}_c{1 + view % 2}s1_{frame:06d}_01.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(proto + rng.normal(0, 30, proto.shape), 0, 255).astype(np.uint8)).save(
                path, quality=95)
    return root


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def noise_root(tmp_path_factory) -> Path:
    return write_noise_market(tmp_path_factory.mktemp("noise"))


@pytest.fixture(scope="module")
def single(noise_root, tmp_path_factory) -> dict:
    """One process: 2 epochs (kept as a checkpoint), resumed to 3 (single-process resume is exact)."""
    base = tmp_path_factory.mktemp("single")
    torch.set_num_threads(1)
    _run(noise_root, base / "two", epochs=2, sync_bn=True)   # saved: a resume on 2 processes syncs
    shutil.copytree(base / "two", base / "three")
    _run(noise_root, base / "three", epochs=3, resume=True)
    return {"two": base / "two", "three": base / "three", "history": _history(base / "three")}


@pytest.fixture(scope="module")
def ddp(noise_root, tmp_path_factory) -> Path:
    """torchrun, 2 processes: 2 epochs with --sync-bn into sync/, 1 epoch without into plain/."""
    out = tmp_path_factory.mktemp("ddp")
    proc = _torchrun(__file__, "pair", str(noise_root), str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


# ----------------------------------------------------------------------------- sampler sharding

@pytest.mark.parametrize("world", [2, 4, 8])
def test_ranks_split_every_global_batch_of_the_same_plan(world):
    items = [(f"{i}.jpg", pid, i % 3) for i, pid in enumerate(np.random.default_rng(1).integers(0, 9, 70))]
    whole = EpochKeyedSampler(items, 16, 2, seed=3)
    ranks = [EpochKeyedSampler(items, 16, 2, seed=3, world_size=world, rank=r) for r in range(world)]
    for epoch in (0, 1):
        want = list(whole)                                    # (index, epoch, position), 16 a batch
        shards = [list(s) for s in ranks]
        assert all(len(s) == len(want) // world == len(ranks[0]) for s in shards)
        per = 16 // world
        for b in range(len(want) // 16):                     # each step: the rank slices, in rank order
            step = [d for s in shards for d in s[b * per:(b + 1) * per]]
            assert step == want[b * 16:(b + 1) * 16]
        draws = [d for s in shards for d in s]
        assert len(set(draws)) == len(draws) and sorted(draws) == sorted(want)   # no overlap, union = all
        assert {d[1] for d in draws} == {epoch}


def test_plain_sampler_shard_is_its_slice_of_each_batch():
    items = [(f"{i}.jpg", i // 5, 0) for i in range(40)]      # 8 ids x 5
    sampler = RandomIdentitySampler(items, 8, 2, seed=0, world_size=2, rank=1)
    batches = sampler.batches(epoch=0)
    assert list(sampler) == [i for batch in batches for i in batch[4:8]]
    assert len(sampler) == len(batches) * 4 and sampler.local_batch_size == 4


def test_world_size_must_divide_the_global_batch_and_not_exceed_it():
    assert shard_size(32, 4) == 8 and shard_size(32, 1) == 32 and shard_size(32, 32) == 1
    with pytest.raises(ValueError, match=r"world size \(3 processes\) must divide the global batch "
                                         r"\(32 images.*--batch-size 33"):
        shard_size(32, 3)
    with pytest.raises(ValueError, match="40 processes but a global batch of 32 images.*at most 32"):
        shard_size(32, 40)
    with pytest.raises(ValueError, match="1 image per process.*--sync-bn"):
        check_batch(8, sync_bn=False, world_size=8)
    assert check_batch(8, sync_bn=True, world_size=8) == 1
    items = [(f"{i}.jpg", i // 4, 0) for i in range(32)]
    with pytest.raises(ValueError, match="must divide"):
        RandomIdentitySampler(items, 8, 2, world_size=3, rank=0)
    with pytest.raises(ValueError, match="rank must be in 0..1"):
        RandomIdentitySampler(items, 8, 2, world_size=2, rank=2)


# ----------------------------------------------------------------------------- environment

def test_incomplete_or_bad_environment_is_one_clear_error():
    assert env_world({}) is None and env_world({"WORLD_SIZE": "1"}) is None      # one process
    with pytest.raises(DistributedInitError, match=r"WORLD_SIZE=2\) but LOCAL_RANK, MASTER_ADDR, "
                                                   r"MASTER_PORT are not set.*rendezvous.*torchrun"):
        env_world({"WORLD_SIZE": "2", "RANK": "0"})
    full = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert env_world(full) == {"rank": 1, "world_size": 2, "local_rank": 1, "master_addr": "10.0.0.1",
                               "master_port": 29500}
    with pytest.raises(DistributedInitError, match="must be integers.*MASTER_PORT='x'"):
        env_world({**full, "MASTER_PORT": "x"})
    with pytest.raises(DistributedInitError, match="inconsistent.*RANK=2, WORLD_SIZE=2"):
        env_world({**full, "RANK": "2"})
    assert distributed.timeout_s({}) == 1800 and distributed.timeout_s({"HACNN_DIST_TIMEOUT": "2.5"}) == 2.5
    with pytest.raises(DistributedInitError, match="HACNN_DIST_TIMEOUT must be a positive"):
        distributed.timeout_s({"HACNN_DIST_TIMEOUT": "soon"})
    cuda = torch.device("cuda")
    assert distributed.local_device(cuda, {}) == cuda                             # one process: as given
    assert distributed.local_device(torch.device("cpu"), full) == torch.device("cpu")
    assert distributed.local_device(torch.device("cuda", 0), full) == torch.device("cuda", 0)


def test_local_rank_beyond_the_visible_gpus_is_one_clear_error(monkeypatch, tmp_path, capsys):
    """A CUDA run with more processes per machine than GPUs: local_device names LOCAL_RANK and the count."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    message = (r"LOCAL_RANK=2 but this machine has 2 visible CUDA device\(s\): --nproc_per_node must not "
               r"exceed the GPUs per machine")
    with pytest.raises(DistributedInitError, match=message):
        distributed.local_device(torch.device("cuda"), env)
    assert distributed.local_device(torch.device("cuda"), {**env, "LOCAL_RANK": "1"}) == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(DistributedInitError, match=r"LOCAL_RANK=0 but this machine has 0 visible"):
        distributed.local_device(torch.device("cuda"), {**env, "LOCAL_RANK": "0"})
    # through the CLI (the default device is CUDA where it is available): that line, before any file
    from hacnn.__main__ import main

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["train", "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hacnn train: error: LOCAL_RANK=2 but this machine has 2 visible CUDA device(s)"), err
    assert not (tmp_path / "run").exists()


def test_sync_bn_flag_reaches_the_train_config():
    from hacnn.__main__ import _train_keywords, build_parser

    assert _train_keywords(build_parser().parse_args(["train", "--sync-bn"]))["sync_bn"] is True
    assert _train_keywords(build_parser().parse_args(["train"]))["sync_bn"] is None   # the default


@pytest.mark.slow
def test_a_rank_that_never_joins_times_out_with_the_endpoint_named(tmp_path):
    """Rank 0 alone waits for rank 1; rank 1 alone finds nobody at the endpoint: both stop in ~2 s."""
    ports, procs = {0: _free_port(), 1: _free_port()}, {}
    for rank in (0, 1):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(ports[rank]), HACNN_DIST_TIMEOUT="2")
        procs[rank] = subprocess.Popen(
            [sys.executable, "-m", "hacnn", "train", "--out", str(tmp_path / f"run{rank}"), "--no-progress"],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for rank, proc in procs.items():
        start = time.monotonic()
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 1, err
        last = err.strip().splitlines()[-1]                  # (after c10d's own log lines)
        assert last.startswith(f"hacnn train: error: rank {rank} of 2: the process group (gloo) did not form "
                               f"at the rendezvous endpoint 127.0.0.1:{ports[rank]} "), err
        assert "within 2 s" in last and "HACNN_DIST_TIMEOUT" in last and "Traceback" not in err
        assert time.monotonic() - start < 60
    assert not (tmp_path / "run0").exists() and not (tmp_path / "run1").exists()   # nothing written


# ----------------------------------------------------------------------------- 2 processes

@pytest.mark.slow
def test_two_processes_with_sync_bn_train_like_one_process(ddp, single):
    """The same global batches and lr: per-epoch losses equal to float rounding (see the module doc)."""
    got, want = _history(ddp / "sync"), single["history"][:2]
    assert [r["epoch"] for r in got] == [1, 2]
    for key in KEYS:          # accuracies: an image that flips is 1/64 (AMD EPYC: one image, epoch 2)
        tol = dict(atol=2 / 64, rtol=0) if key.startswith("acc") else dict(rtol=EPOCH_RTOL)
        np.testing.assert_allclose([r[key] for r in got], [r[key] for r in want], err_msg=key, **tol)
    assert got[1]["loss"] < got[0]["loss"]
    a, b = safe_load(ddp / "sync" / "last.pth")["model"], safe_load(single["two"] / "last.pth")["model"]
    assert set(a) == set(b) and not any(k.startswith("module.") for k in a)    # saved without DDP's prefix
    # A bias that feeds a batch norm has no effect on the training loss (the norm removes any constant)
    # and a true gradient of 0; Adam scales the rounding noise of that gradient up to lr-sized steps,
    # so those biases (and the running means that follow them) drift apart. The rest agrees.
    drift = {k for k in a if k.endswith((".conv.bias", "running_mean")) or k in ("fc_global.0.bias",
                                                                                "fc_local.0.bias")}
    assert len(drift) < len(a) / 2
    rel = sorted(((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-6)).item()
                 for k in set(a) - drift if a[k].is_floating_point())
    assert rel[len(rel) // 2] < WEIGHT_RTOL, rel[len(rel) // 2]    # the median tensor's relative change
    # without SyncBatchNorm each process normalises its 8 images alone: a different computation
    plain = _history(ddp / "plain")[0]["loss"]
    assert abs(plain - want[0]["loss"]) > 1e-4 * want[0]["loss"]
    # rank 0 alone writes: one log, one checkpoint with every rank's RNG state
    train = safe_load(ddp / "sync" / "last.pth")["train"]
    assert train["world_size"] == 2 and len(train["rng_ranks"]) == 2
    assert sorted(p.name for p in (ddp / "sync").iterdir()) == ["best.pth", "last.pth", "log.csv",
                                                                 "log.json", "run.json"]
    assert json.loads((ddp / "sync" / "log.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_ddp_checkpoint_loads_and_resumes_in_one_process(ddp, single, tmp_path):
    model = load_model(ddp / "sync" / "last.pth").eval()
    assert model(torch.rand(2, 3, 32, 16)).shape == (2, 128)
    shutil.copytree(ddp / "sync", tmp_path / "run")
    resumed = _run(None, tmp_path / "run", epochs=3, resume=True)     # root and data from run.json
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    # epoch 3 on 1 process continues the plan of epochs 1-2 on 2: the same batches, optimiser state
    # and schedule; the weights of the two runs differ by rounding (above), so RESUMED_RTOL
    for key in KEYS:
        tol = dict(abs=4 / 64) if key.startswith("acc") else dict(rel=RESUMED_RTOL)
        assert resumed.history[2][key] == pytest.approx(single["history"][2][key], **tol), key


@pytest.mark.slow
def test_single_process_checkpoint_resumes_on_two_processes(noise_root, single, tmp_path):
    shutil.copytree(single["two"], tmp_path / "run")
    proc = _torchrun(__file__, "resume3", str(noise_root), str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = _history(tmp_path / "run")
    assert [r["epoch"] for r in got] == [1, 2, 3] and got[:2] == single["history"][:2]
    for key in KEYS:          # the 2-process epoch 3 continues the 1-process run (see above)
        tol = dict(abs=4 / 64) if key.startswith("acc") else dict(rel=RESUMED_RTOL)
        assert got[2][key] == pytest.approx(single["history"][2][key], **tol), key


@pytest.mark.slow
def test_kill_9_of_one_rank_ends_the_job_and_resume_continues_exactly(noise_root, ddp, tmp_path):
    out, marker, log = tmp_path / "run", tmp_path / "paused", tmp_path / "torchrun.log"
    proc = _torchrun(__file__, "pause", str(noise_root), str(out), str(marker), wait=False, log=log)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "rank 1 never reached epoch 2"
            time.sleep(0.05)
        pid = int(marker.read_text())
        os.kill(pid, signal.SIGKILL)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    text = log.read_text()
    assert code == 1, text[-3000:]                             # torchrun stops every process
    assert "ChildFailedError" in text and f"Signal 9 (SIGKILL) received by PID {pid}" in text, text[-3000:]
    assert safe_load(out / "last.pth")["train"]["epoch"] == 1   # epoch 2 never saved
    assert json.loads((out / "log.json").read_text())["status"] == "running"

    resumed = _torchrun(__file__, "resume2", str(noise_root), str(out))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    got, want = _history(out), _history(ddp / "sync")
    for key in KEYS + ("mAP",):
        assert [r[key] for r in got] == [r[key] for r in want], key              # bitwise
    a, b = safe_load(out / "last.pth")["model"], safe_load(ddp / "sync" / "last.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_cli_under_torchrun_refuses_a_world_size_that_does_not_divide_the_batch(tmp_path):
    proc = _torchrun("-m", "hacnn", "train", "--out", str(tmp_path / "run"), "--batch-size", "16",
                     "--no-progress", nproc=3, timeout=120)
    assert proc.returncode == 1
    text = proc.stdout + proc.stderr
    assert "hacnn train: error: the world size (3 processes) must divide the global batch (16 images" in text
    assert not (tmp_path / "run").exists()


CLI_TRAIN = ("-m", "hacnn", "train", "--synthetic-size", "tiny", "--epochs", "1", "--batch-size", "16",
             "--num-instances", "4", "--workers", "0", "--amp", "none", "--device", "cpu", "--no-progress")


@pytest.mark.slow
@pytest.mark.parametrize("nodes, cache", [(1, "none"), (1, "memory"), (2, "none")],
                         ids=["1 node x 2", "1 node x 2, data cache", "2 nodes x 1"])
def test_cli_trains_under_torchrun_and_rank_0_alone_writes(tmp_path, nodes, cache):
    """``torchrun ... -m hacnn train``, the real CLI: the full HA-CNN on the tiny synthetic benchmark
    (generated by rank 0 under --root), 1 epoch of 14 global batches of 16, evaluated at its end.

    Two processes on one node, or two nodes of one process each on this host (``--nnodes 2
    --node_rank 0|1``, torchrun's static rendezvous at 127.0.0.1:port). Each node runs in its own
    working folder with the relative ``--out run``, so a file that rank 1 wrote would be in node1/.
    """
    port, data = _free_port(), tmp_path / "data"
    folders, procs = [tmp_path / f"node{r}" for r in range(nodes)], []
    args = (*CLI_TRAIN, "--root", str(data), "--out", "run", "--data-cache", cache)
    try:
        for rank in reversed(range(nodes)):          # node 1 first: it waits for node 0's store
            folders[rank].mkdir()
            procs.append(_torchrun(*args, nproc=2 // nodes, port=port, cwd=folders[rank], wait=False,
                                   log=tmp_path / f"node{rank}.log",
                                   launcher=("--nnodes", str(nodes), "--node_rank", str(rank))))
        codes = [proc.wait(timeout=240) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    logs = [(tmp_path / f"node{rank}.log").read_text() for rank in range(nodes)]
    assert codes == [0] * nodes, "\n---\n".join(text[-3000:] for text in logs)
    run = folders[0] / "run"
    assert sorted(p.name for p in run.iterdir()) == ["best.pth", "last.pth", "log.csv", "log.json", "run.json"]
    log = json.loads((run / "log.json").read_text())
    assert log["status"] == "finished" and [r["epoch"] for r in log["epochs"]] == [1]
    assert log["train_config"]["data_cache"] == cache and log["epochs"][0]["mAP"] is not None
    train = safe_load(run / "last.pth")["train"]
    assert train["world_size"] == 2 and len(train["rng_ranks"]) == 2
    assert train["step"] == log["plan"]["steps_per_epoch"] == 14          # global batches of 4 ids x 4
    # rank 0 alone wrote (node 1's folder stays empty) and printed
    assert [p.name for p in folders[0].iterdir()] == ["run"] and all(not any(f.iterdir()) for f in folders[1:])
    assert logs[0].count("training on 2 processes (cpu)") == 1 and logs[0].count("run folder: run (1 epochs)") == 1
    assert all("training on" not in text and "run folder" not in text for text in logs[1:])


def _triplet_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """16 features of 4 identities x 4, each identity's images spread over both halves."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 8, generator=g, dtype=torch.float64), torch.arange(16) % 4


@pytest.mark.slow
def test_triplet_loss_mined_over_two_processes_is_the_one_process_loss(tmp_path):
    """Each process's anchors against the global batch (hacnn.distributed.gather_batch): the mean of
    the two processes' losses, and DDP's average of their gradients, are the one-process ones."""
    from hacnn.losses import batch_hard_triplet

    proc = _torchrun(__file__, "triplet", "-", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    f, y = _triplet_batch()
    f.requires_grad_(True)
    want = batch_hard_triplet(f, y)
    want.backward()
    assert want.item() > 0.1
    assert sum(p["loss"] for p in parts) / 2 == pytest.approx(want.item(), rel=1e-6)
    torch.testing.assert_close(torch.cat([p["grad"] for p in parts]) / 2, f.grad.float(), rtol=1e-5, atol=1e-7)
    # mined within each process's half alone (the per-process loss before the gather): another loss
    halves = [batch_hard_triplet(f[:8], y[:8]), batch_hard_triplet(f[8:], y[8:])]
    assert abs(sum(h.item() for h in halves) / 2 - want.item()) > 0.01


# ----------------------------------------------------------------------------- the torchrun worker

def _worker(argv: list[str]) -> None:
    """Entry under torchrun: ``pair|pause|resume2|resume3|triplet ROOT OUT [MARKER]``."""
    import hacnn.experiment as experiment
    from hacnn.losses import batch_hard_triplet
    from hacnn.training import Trainer

    torch.set_num_threads(1)
    mode, root, out = argv[0], Path(argv[1]), Path(argv[2])
    if mode == "triplet":
        distributed.init_from_env("cpu")
        rank = distributed.get_rank()
        f, y = _triplet_batch()
        mine = f[8 * rank:8 * (rank + 1)].float().requires_grad_(True)
        loss = batch_hard_triplet(mine, y[8 * rank:8 * (rank + 1)], gather=distributed.gather_batch)
        loss.backward()
        torch.save({"loss": loss.item(), "grad": mine.grad}, out / f"rank{rank}.pt")
    elif mode == "pair":
        _run(root, out / "sync", epochs=2, sync_bn=True)
        _run(root, out / "plain", epochs=1, eval_every=0)
    elif mode == "pause":
        marker = Path(argv[3])

        class PausingTrainer(Trainer):
            def train_epoch(self):
                if self.epoch == 1 and distributed.get_rank() == 1:     # rank 1, epoch 2
                    self.train_loader = _pause_after(self.train_loader, 2, marker)
                return super().train_epoch()
        experiment.Trainer = PausingTrainer
        _run(root, out, epochs=2, sync_bn=True)
    else:
        _run(None, out, epochs=int(mode[-1]), resume=True)
    distributed.cleanup()


def _pause_after(loader, steps: int, marker: Path):
    """Yield ``steps`` batches (starting the sampler's next epoch), then write our pid and wait."""
    for i, batch in enumerate(loader):
        if i == steps:
            marker.with_suffix(".tmp").write_text(str(os.getpid()))
            os.replace(marker.with_suffix(".tmp"), marker)
            time.sleep(600)
        yield batch


if __name__ == "__main__":
    _worker(sys.argv[1:])
