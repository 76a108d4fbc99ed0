"""hacnn.data.tensor_cache: the uint8 image cache and its batched tensor augmentation.

The cached path must give the default loader's batches bit for bit (same
resize, same per-sample draws, exact uint8 geometry); the geometry is also
checked against a per-sample slicing reference written here.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from hacnn import HACNN
from hacnn.config import TrainConfig
from hacnn.data import IMAGENET_MEAN, IMAGENET_STD, ImageReadError, build_train_loader, build_transforms
from hacnn.data.loading import read_image
from hacnn.data.tensor_cache import (CacheMemoryWarning, CachedBatches, TensorAugment, TensorCache,
                                     build_cached_train_loader, cache_bytes, cache_device)
from hacnn.training import Trainer

H, W = 32, 16
NUM_IDS, PER_ID = 6, 4


def noise_items(root: Path, num_ids: int = NUM_IDS, per_id: int = PER_ID, seed: int = 0):
    """``(path, pid, camid)`` of random-noise images of assorted sizes (PNG and JPEG)."""
    rng = np.random.default_rng(seed)
    items = []
    for pid in range(num_ids):
        for k in range(per_id):
            size = (int(rng.integers(8, 40)), int(rng.integers(16, 90)))       # PIL (w, h)
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            path = root / f"{pid:04d}_c{k % 3 + 1}_{k}.{'png' if k % 2 else 'jpg'}"
            Image.fromarray(pixels).save(path)
            items.append((str(path), pid, k % 3))
    return items


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    return noise_items(tmp_path_factory.mktemp("noise"))


@pytest.fixture(scope="module")
def cache(items):
    return TensorCache(items, H, W, workers=0)


def test_cache_holds_the_test_transforms_images(items, cache):
    from torchvision.transforms.v2.functional import to_dtype

    assert cache.images.shape == (len(items), 3, H, W) and cache.images.dtype == torch.uint8
    assert cache.nbytes == cache_bytes(len(items), H, W) == len(items) * 3 * H * W
    assert cache.pids.tolist() == [pid for _, pid, _ in items]
    assert cache.camids.tolist() == [camid for _, _, camid in items]
    test = build_transforms(H, W, train=False, normalize=False)
    for i, (path, _, _) in enumerate(items):
        want = test(read_image(path))                                  # float in [0, 1]
        assert (cache.images[i].float() - want * 255).abs().max() <= 1  # within a uint8 level ...
        assert torch.equal(to_dtype(cache.images[i], torch.float32, scale=True), want)  # ... in fact exact


def reference(images: torch.Tensor, params: torch.Tensor, pad: int) -> torch.Tensor:
    """flip -> zero-pad -> crop -> erase, one image at a time with plain slicing (uint8)."""
    out = []
    for image, (flip, top, left, i, j, h, w) in zip(images, params.tolist()):
        x = image.flip(-1) if flip else image
        x = F.pad(x, (pad, pad, pad, pad))[:, top:top + H, left:left + W].clone()
        x[:, i:i + h, j:j + w] = 0
        out.append(x)
    return torch.stack(out)


@pytest.mark.parametrize("channels_last", [True, False])
def test_augment_equals_plain_slicing(channels_last):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, H, W), dtype=torch.uint8, generator=g)
    pad = 5
    params = torch.tensor([[0, 0, 0, 0, 0, 0, 0],                # no shift: top-left corner of the padding
                           [1, 0, 0, 0, 0, 0, 0],
                           [0, 2 * pad, 2 * pad, 0, 0, 0, 0],    # the far corner
                           [1, 2 * pad, 1, 3, 2, 5, 4],          # + an erased box
                           [1, pad, pad, 0, 0, 0, 0],            # centred: a plain mirror image
                           [0, 3, 7, 10, 0, 4, W - 1]])
    plain = TensorAugment(H, W, pad=pad, normalize=False)
    out = plain(images, params, channels_last)
    assert out.shape == (6, 3, H, W) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    want = reference(images, params, pad)
    pixels = (out * 255).round().to(torch.uint8)
    assert torch.equal(pixels, want)
    assert torch.equal(pixels[4], images[4].flip(-1)) and torch.equal(pixels[0, :, :pad], torch.zeros(3, pad, W,
                                                                                     dtype=torch.uint8))
    normed = TensorAugment(H, W, pad=pad)(images, params, channels_last)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    expected = (want.float() / 255 - mean) / std
    expected[3, :, 3:8, 2:6] = 0                                   # erasing comes after normalising
    expected[5, :, 10:14, 0:W - 1] = 0
    torch.testing.assert_close(normed, expected, rtol=1e-6, atol=1e-6)


def _batches(loader, epochs: int = 2):
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        out += [tuple(batch) for batch in loader]
    return out


def _assert_same_batches(got, want):
    assert len(got) == len(want)
    for (x, p, c, paths), (x0, p0, c0, paths0) in zip(got, want):
        assert torch.equal(x, x0) and torch.equal(p, p0) and torch.equal(c, c0)
        assert list(paths) == list(paths0)


@pytest.mark.parametrize("augment", [{}, {"pad": 4, "random_erasing": True}, {"flip": False, "pad_crop": False}])
def test_cached_batches_equal_the_default_loaders_bitwise(items, cache, augment):
    loader = build_train_loader(items, 8, 2, height=H, width=W, workers=0, seed=7, **augment)
    cached = CachedBatches(cache, 8, 2, seed=7, world_size=1, rank=0, **augment)
    assert len(cached) == len(loader)
    _assert_same_batches(_batches(cached), _batches(loader))
    assert isinstance(cached.sampler, type(loader.sampler))


def test_ranks_split_the_single_process_batches(cache):
    whole = _batches(CachedBatches(cache, 8, 2, seed=3, world_size=1, rank=0))
    halves = [_batches(CachedBatches(cache, 8, 2, seed=3, world_size=2, rank=r)) for r in range(2)]
    for full, a, b in zip(whole, *halves, strict=True):
        assert torch.equal(full[0], torch.cat([a[0], b[0]])) and torch.equal(full[1], torch.cat([a[1], b[1]]))


def test_a_samples_augmentation_does_not_depend_on_its_batch(cache):
    batches = CachedBatches(cache, 8, 2, seed=1, world_size=1, rank=0, random_erasing=True)
    draws = list(batches.sampler)[:8]
    indices, epochs, positions = zip(*draws)
    full = batches.batch(indices, 0, positions)[0]
    for k in (0, 5):
        alone = batches.batch(indices[k:k + 1], 0, positions[k:k + 1])[0]
        assert torch.equal(alone[0], full[k])
    moved = batches.batch(indices[:1], 0, [positions[0] + 1])[0]     # another draw of the same image
    assert not torch.equal(moved[0], full[0])


def test_global_rng_is_left_alone(cache):
    state = torch.get_rng_state()
    next(iter(CachedBatches(cache, 8, 2, world_size=1, rank=0, random_erasing=True)))
    assert torch.equal(state, torch.get_rng_state())


# ----------------------------------------------------------------------------- prefetch (CUDA)

def test_prefetch_is_a_no_op_on_the_cpu(cache, monkeypatch):
    def no_stream(*args, **kwargs):
        raise AssertionError("a CUDA stream on the CPU path")

    monkeypatch.setattr(torch.cuda, "Stream", no_stream)
    monkeypatch.setattr(torch.cuda, "current_stream", no_stream)
    kw = dict(seed=5, world_size=1, rank=0, random_erasing=True)
    on, off = CachedBatches(cache, 8, 2, prefetch=True, **kw), CachedBatches(cache, 8, 2, prefetch=False, **kw)
    _assert_same_batches(_batches(on), _batches(off))


def test_prefetch_prepares_one_batch_ahead_on_a_side_stream(cache, monkeypatch):
    """The CUDA path's stream protocol, with stand-in streams (the tensors stay on the CPU): batch
    k+1 is queued on the side stream before batch k is handed over, and batch k is handed over
    only after the current stream waits for the side stream and its images are recorded on it."""
    import contextlib

    events, streams = [], ["current"]

    class Stream:
        def __init__(self, name: str = "side"):
            self.name = name

        def wait_stream(self, other):
            events.append(f"{self.name} waits {other.name}")

    @contextlib.contextmanager
    def on(stream):
        streams.append(stream.name)
        yield
        streams.pop()

    monkeypatch.setattr(torch.cuda, "Stream", lambda device: Stream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: Stream("current"))
    monkeypatch.setattr(torch.cuda, "stream", on)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, stream: events.append(f"record {stream.name}"))
    kw = dict(seed=5, world_size=1, rank=0, random_erasing=True)
    plain = CachedBatches(cache, 8, 2, prefetch=False, **kw)
    prefetched = CachedBatches(cache, 8, 2, prefetch=True, **kw)
    prefetched.device = torch.device("cuda")                 # take the CUDA path ...

    def batch(*plan):                                        # ... with the CPU batches
        events.append(f"prepare on {streams[-1]}")
        return plain.batch(*plan)

    prefetched.batch = batch
    got = []
    for k, b in enumerate(prefetched):
        events.append(f"train {k}")
        got.append(b)
    n = len(got)
    assert n == len(prefetched) >= 3
    want = ["side waits current", "prepare on side"]
    for k in range(n):
        want += ["current waits side", "record current"] + (["prepare on side"] if k + 1 < n else []) + [f"train {k}"]
    assert events == want
    _assert_same_batches(got, list(CachedBatches(cache, 8, 2, prefetch=False, **kw)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("where", ["cpu", "cuda"])
def test_prefetched_cuda_batches_equal_the_unprefetched(items, cache, where):
    """A cache in host or device memory, batches on the GPU: the same with and without prefetch while a
    long step runs on the current stream, and the CPU's batches up to float rounding."""
    images = TensorCache(items, H, W, device=where, workers=0)
    kw = dict(seed=2, world_size=1, rank=0, random_erasing=True)

    def run(prefetch: bool):
        batches = CachedBatches(images, 8, 2, device="cuda", prefetch=prefetch, **kw)
        out = []
        for epoch in range(2):
            batches.sampler.set_epoch(epoch)
            for x, *rest in batches:
                torch.cuda._sleep(2_000_000)       # a training step that outlasts the next batch's preparation
                out.append((x.clone(), *rest))     # x is freed next: its memory must wait for this clone
        torch.cuda.synchronize()
        return [(x.cpu(), *rest) for x, *rest in out]

    got = run(True)
    _assert_same_batches(got, run(False))
    for (x, *_), (x0, *_) in zip(got, _batches(CachedBatches(cache, 8, 2, **kw)), strict=True):
        torch.testing.assert_close(x, x0, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- memory and bad input

def test_a_cache_that_does_not_fit_falls_back_to_the_loader(items, monkeypatch):
    monkeypatch.setattr("hacnn.data.tensor_cache.host_available_bytes", lambda: 20 * 2**20)
    needed = cache_bytes(len(items) * 10_000, 160, 64)
    with pytest.warns(CacheMemoryWarning, match=rf"needs {needed / 2**20:.0f} MiB but cpu has 20 MiB available"
                      r".*normal loader"):
        assert cache_device(needed, "cpu") is None
    with pytest.warns(CacheMemoryWarning, match="normal loader"):
        loader = build_cached_train_loader(items * 10_000, 8, 2, workers=0, world_size=1, rank=0)
    assert isinstance(loader, DataLoader)
    assert cache_device(cache_bytes(len(items), H, W), "cpu") == torch.device("cpu")   # 18 KiB: fits


def test_auto_caches_what_fits_and_quietly_loads_what_does_not(items, monkeypatch):
    import warnings

    monkeypatch.setattr("hacnn.data.tensor_cache.host_available_bytes", lambda: 20 * 2**20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # "auto" asked for nothing: no warning
        too_big = build_cached_train_loader(items * 10_000, 8, 2, cache="auto", workers=0, world_size=1, rank=0)
        fits = build_cached_train_loader(items, 8, 2, cache="auto", workers=0, world_size=1, rank=0,
                                         height=H, width=W)
    assert isinstance(too_big, DataLoader) and isinstance(fits, CachedBatches)
    assert fits.cache.device == torch.device("cpu") and fits.cache.build_s > 0


def test_host_memory_must_hold_a_copy_per_process_on_the_host(monkeypatch):
    needed = cache_bytes(12_936, 160, 64)                    # Market-1501: 379 MiB
    monkeypatch.setattr("hacnn.data.tensor_cache.host_available_bytes", lambda: 2000 * 2**20)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")              # 758 MiB <= 1000 MiB: fits
    assert cache_device(needed, "cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")              # 1516 MiB > 1000 MiB
    with pytest.warns(CacheMemoryWarning, match=r"needs 1516 MiB \(4 processes' copies\) but cpu has 2000 MiB"):
        assert cache_device(needed, "cpu") is None


def test_a_device_too_small_falls_back_to_host_memory(monkeypatch):
    free = {"cuda": 100 * 2**20, "cpu": 10 * 2**30}          # Market-1501: 12,936 x 3 x 160 x 64 B = 379 MiB
    monkeypatch.setattr("hacnn.data.tensor_cache.available_bytes", lambda d: free[torch.device(d).type])
    with pytest.warns(CacheMemoryWarning, match=r"needs 379 MiB but cuda has 100 MiB.*host memory"):
        assert cache_device(cache_bytes(12_936, 160, 64), "cuda") == torch.device("cpu")


def test_unreadable_image_names_its_file(items, tmp_path):
    bad = tmp_path / "0009_c1_0.jpg"
    bad.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"0009_c1_0\.jpg.*empty file"):
        TensorCache([*items[:3], (str(bad), 9, 0)], H, W, workers=0)


def test_bad_settings():
    with pytest.raises(ValueError, match="cache must be one of"):
        build_cached_train_loader([], cache="gpu")
    with pytest.raises(ValueError, match="data_cache must be one of"):
        TrainConfig(data_cache="gpu")


def test_builder_modes(items):
    cached = build_cached_train_loader(items, 8, 2, height=H, width=W, cache="device", workers=0,
                                       world_size=1, rank=0)
    assert isinstance(cached, CachedBatches) and cached.cache.device == torch.device("cpu")
    plain = build_cached_train_loader(items, 8, 2, height=H, width=W, cache="none", workers=0,
                                      world_size=1, rank=0)
    assert isinstance(plain, DataLoader)


# ----------------------------------------------------------------------------- training: exact resume

TINY_MODEL = dict(channels=(32, 64, 96), feat_dim=64, input_size=(H, W), local_sizes=((8, 8), (4, 4), (2, 2)))


class Crash(RuntimeError):
    pass


def _crash_after(batches, steps: int):
    for i, batch in enumerate(batches):
        if i == steps:
            raise Crash
        yield batch


def _trainer(out_dir, loader, epochs: int, cls=Trainer) -> Trainer:
    torch.manual_seed(0)
    config = TrainConfig(epochs=epochs, batch_size=8, num_instances=2, lr=1e-3, eval_every=0, workers=0,
                         amp="none")
    return cls(HACNN(NUM_IDS, **TINY_MODEL), loader, config, out_dir, device="cpu", progress=False)


@pytest.mark.usefixtures("one_thread")
def test_cached_run_equals_the_default_run_and_resumes_exactly(items, cache, tmp_path):
    def cached():
        return CachedBatches(cache, 8, 2, seed=0, world_size=1, rank=0)

    default = _trainer(tmp_path / "default", build_train_loader(items, 8, 2, height=H, width=W, workers=0,
                                                               seed=0), 3).fit()
    full = _trainer(tmp_path / "full", cached(), 3).fit()

    class Crashing(Trainer):                  # dies in the middle of epoch 3, after 2 steps
        def train_epoch(self):
            if self.epoch == 2:
                self.train_loader = _crash_after(self.train_loader, 2)
            return super().train_epoch()

    with pytest.raises(Crash):
        _trainer(tmp_path / "split", cached(), 3, cls=Crashing).fit()
    resumed = _trainer(tmp_path / "split", cached(), 3)
    assert resumed.resume() == 2
    split = resumed.fit()
    keys = ("loss", "loss_global", "loss_local", "acc_global", "acc_local", "lr")
    for key in keys:
        assert [r[key] for r in split] == [r[key] for r in full] == [r[key] for r in default], key  # bitwise
    a, b = resumed.model.state_dict(), _load(tmp_path / "full")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _load(out: Path) -> dict:
    from hacnn.checkpoint import safe_load

    return safe_load(out / "last.pth")["model"]


# ----------------------------------------------------------------------------- wiring: config, CLI, experiment

def test_cli_flag_reaches_the_train_config():
    import argparse

    from hacnn.__main__ import _train_arguments, _train_keywords

    parser = argparse.ArgumentParser()
    _train_arguments(parser)
    assert _train_keywords(parser.parse_args(["--data-cache", "memory"]))["data_cache"] == "memory"
    assert _train_keywords(parser.parse_args([]))["data_cache"] is None          # TrainConfig's default
    assert TrainConfig().data_cache == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--data-cache", "gpu"])


def test_the_run_cache_key_ignores_the_data_cache():
    from hacnn.reproduce import config_hash, run_config

    assert config_hash(run_config(quick=True, data_cache="memory")) == config_hash(run_config(quick=True))
    assert config_hash(run_config(quick=True, seed=1)) != config_hash(run_config(quick=True))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.filterwarnings("ignore::hacnn.data.DatasetCountWarning")
def test_experiment_with_the_cache_trains_as_without(tmp_path, capsys):
    from fixtures import make_market1501
    from hacnn.experiment import run_experiment

    spec = {"bounding_box_train": [(pid, 1 + i % 3) for pid in (2, 4, 6, 8, 9) for i in range(3)],
            "query": [(1, 1), (3, 2)], "bounding_box_test": [(1, 2), (3, 3), (5, 1)]}
    root = make_market1501(tmp_path / "data", spec=spec)
    rng = np.random.default_rng(1)
    for path in (root / "bounding_box_train").glob("*.jpg"):       # texture, so flips and shifts show
        Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(path)
    kw = dict(root=root, model=TINY_MODEL, workers=0, epochs=2, eval_every=2, batch_size=8, num_instances=2,
              lr=1e-3, amp="none", progress=False, verbose=False)
    plain = run_experiment("market1501", tmp_path / "plain", data_cache="none", **kw)
    capsys.readouterr()
    cached = run_experiment("market1501", tmp_path / "cached", **{**kw, "verbose": True})   # default: "auto"
    assert re.search(r"training images decoded once into cpu memory \(0 MiB in \d+\.\d s\)",
                     capsys.readouterr().out)
    assert isinstance(cached.trainer.train_loader, CachedBatches)
    assert isinstance(plain.trainer.train_loader, DataLoader)
    for key in ("loss", "acc_global", "loss_local"):
        assert [r[key] for r in cached.history] == [r[key] for r in plain.history], key
    assert cached.final["mAP"] == plain.final["mAP"] and cached.final["epoch"] == 2
    resumed = run_experiment("market1501", tmp_path / "cached", resume=True, epochs=3, data_cache="none",
                             **{k: v for k, v in kw.items() if k in ("root", "progress", "verbose")})
    assert isinstance(resumed.trainer.train_loader, DataLoader) and len(resumed.history) == 3
