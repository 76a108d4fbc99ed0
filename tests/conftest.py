import os
import warnings
from pathlib import Path

import pytest
import torch

# Shared test data (real Market-1501 crops), beside the checkout: ../shared/data
SHARED_DATA = Path(os.environ.get("HACNN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    # One intra-op thread per xdist worker: `make test` runs 2 workers on 2 cores, and
    # oversubscribed OpenMP threads spin-wait (several times slower, not just shared).
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    warnings.filterwarnings("ignore", module="torchreid")


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "mini_market1501").is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and stay fast when pytest-xdist shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Give every batch norm non-trivial statistics and affine weights, as after training."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model


def _machine_line() -> str:
    """The CPU and the precision ``amp="auto"`` picks on it: training tests' numbers depend on both."""
    from hacnn.reproducibility import cpu_model
    from hacnn.training import _cpuinfo_words, resolve_amp

    flags = sorted((_cpuinfo_words() or set()) & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile",
                                                  "GenuineIntel", "AuthenticAMD"})
    return (f"hacnn: CPU {cpu_model()} ({' '.join(flags)}), {os.cpu_count()} cores, ATen ISA "
            f"{torch.backends.cpu.get_cpu_capability()}, amp='auto' -> {resolve_amp('auto', 'cpu') or 'fp32'}")


def pytest_report_header(config):
    return _machine_line()


def pytest_terminal_summary(terminalreporter):
    """Also at the end (``make test`` runs ``-q``, which hides the header), next to any failure."""
    terminalreporter.write_line(_machine_line())
