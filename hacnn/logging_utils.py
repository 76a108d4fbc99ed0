"""Per-epoch training logs (CSV + JSON) and process memory.

A run folder holds ``log.csv`` (one row per epoch, fixed columns) and
``log.json`` (the same rows plus both configs, the run's plan and its status). Both
are rewritten atomically from the full history after every epoch, so after
a crash they always agree with ``last.pth`` (which carries the history too).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from pathlib import Path

# Columns of log.csv, in order. ``lr``: the learning rate of the epoch's last
# optimisation step. Evaluation columns are empty on epochs without an evaluation.
TRAIN_COLUMNS = ("epoch", "loss", "loss_global", "loss_local", "acc_global", "acc_local",
                 "lr", "epoch_time_s", "images_per_s", "rss_mb")
EVAL_COLUMNS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP", "eval_time_s")
LOG_COLUMNS = TRAIN_COLUMNS + EVAL_COLUMNS

CSV_NAME = "log.csv"
JSON_NAME = "log.json"


def rss_mb() -> float:
    """Resident set size of this process in MiB (NaN where it cannot be read)."""
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        pass
    try:  # Linux without psutil
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        pass
    try:  # peak, not current, RSS: the best other POSIX systems offer
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (2**20 if sys.platform == "darwin" else 2**10)
    except (ImportError, OSError):
        return float("nan")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _csv_value(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_logs(out_dir: str | os.PathLike, history: list[dict], *, status: str,
               message: str = "", model_config: dict | None = None,
               train_config: dict | None = None, plan: dict | None = None) -> None:
    """Write ``log.csv`` and ``log.json`` for ``history`` (one dict per epoch).

    ``plan``: the run's plan (``hacnn.schedule.make_plan``), kept in log.json.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LOG_COLUMNS)
    for row in history:
        writer.writerow([_csv_value(row.get(c)) for c in LOG_COLUMNS])
    _atomic_write_text(out / CSV_NAME, buf.getvalue())
    payload = {"format": "hacnn-log", "status": status, "message": message,
               "columns": list(LOG_COLUMNS), "model_config": model_config,
               "train_config": train_config, "plan": plan,
               "epochs": [{c: row.get(c) for c in LOG_COLUMNS} for row in history]}
    _atomic_write_text(out / JSON_NAME, json.dumps(_json_safe(payload), indent=1) + "\n")


def read_log(out_dir: str | os.PathLike) -> dict:
    """The parsed ``log.json`` of a run folder."""
    return json.loads((Path(out_dir) / JSON_NAME).read_text())
