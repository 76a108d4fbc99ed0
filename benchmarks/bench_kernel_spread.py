"""How far do the quick preset's numbers move with the CPU's kernels? (the bands of the notebooks' checks)

    python benchmarks/bench_kernel_spread.py [--out runs/kernel-spread] [--seeds 0] [--only NAME ...]

Training from one seed is deterministic on one machine, but a CPU whose
kernels round differently (another instruction set, another thread count:
another order of the same float additions) follows another trajectory, and
every number printed after a training run moves. This script trains the quick
preset (``python -m hacnn train --quick``: small synthetic benchmark, 4 epochs,
Adam 1e-3, fp32) once per *kernel path* in a fresh subprocess:

* the machine's default oneDNN / ATen instruction set, 2 and 1 threads;
* ``ONEDNN_MAX_CPU_ISA=AVX512_CORE`` (AVX-512 without the bf16/VNNI extensions);
* ``ONEDNN_MAX_CPU_ISA=AVX2`` with ``ATEN_CPU_CAPABILITY=avx2`` (what an AVX2-only
  x86-64 machine runs), 2 and 1 threads;

and prints final Rank-1 / mAP of each, their range and sd, and the first and
last epoch's loss. The bands that notebooks 06-09 assert
(``hacnn.reproduce.QUICK_BANDS``) are chosen from this spread (with margin:
a band must hold on machines not measured here). Each finished run is kept in
``--out`` (``spread.json``), so an interrupted benchmark resumes where it
stopped. About 3 minutes a run on 2 idle cores.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATHS = {
    "default ISA, 2 threads": {"OMP_NUM_THREADS": "2"},
    "default ISA, 1 thread": {"OMP_NUM_THREADS": "1"},
    "AVX512_CORE, 2 threads": {"OMP_NUM_THREADS": "2", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "AVX2, 2 threads": {"OMP_NUM_THREADS": "2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "AVX2, 1 thread": {"OMP_NUM_THREADS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}
# Variables that change the kernel path: cleared so that each run gets only its own.
KERNEL_VARS = ("OMP_NUM_THREADS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def train(name: str, seed: int, out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_VARS}
    env.update(PATHS[name])
    run_dir = out / f"{name.replace(',', '').replace(' ', '-')}-seed{seed}"
    cmd = [sys.executable, "-m", "hacnn", "train", "--quick", "--seed", str(seed), "--out", str(run_dir),
           "--force", "--no-progress"]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    epochs = json.loads((run_dir / "log.json").read_text())["epochs"]
    final = [r for r in epochs if r.get("mAP") is not None][-1]
    return {"path": name, "seed": seed, "rank1": 100 * final["rank1"], "mAP": 100 * final["mAP"],
            "loss_first": epochs[0]["loss"], "loss_last": epochs[-1]["loss"],
            "minutes": (time.perf_counter() - start) / 60}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "kernel-spread")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--only", nargs="+", choices=sorted(PATHS), help="these kernel paths only")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "spread.json"
    done = json.loads(store.read_text()) if store.is_file() else []
    for seed in args.seeds:
        for name in args.only or PATHS:
            if any(r["path"] == name and r["seed"] == seed for r in done):
                continue
            done.append(train(name, seed, args.out))
            tmp = store.with_suffix(".tmp")
            tmp.write_text(json.dumps(done, indent=1) + "\n")
            os.replace(tmp, store)
            r = done[-1]
            print(f"{name:<24} seed {seed}: Rank-1 {r['rank1']:5.1f}  mAP {r['mAP']:5.1f}  "
                  f"loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}  ({r['minutes']:.1f} min)", flush=True)
    print(f"\nquick preset, final epoch (Rank-1 / mAP %), {len(done)} runs:")
    for r in done:
        print(f"  {r['path']:<24} seed {r['seed']}: {r['rank1']:5.1f} / {r['mAP']:5.1f}   "
              f"loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}")
    for seed in sorted({r["seed"] for r in done}):
        rows = [r for r in done if r["seed"] == seed]
        for metric in ("rank1", "mAP"):
            vals = [r[metric] for r in rows]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            print(f"seed {seed} {metric:>5}: min {min(vals):.1f}  max {max(vals):.1f}  "
                  f"range {max(vals) - min(vals):.1f}  mean {statistics.mean(vals):.1f}  sd {sd:.1f}  "
                  f"(n={len(vals)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
