"""Image reading, transforms, the P x K sampler and the data loaders."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from fixtures import make_market1501, write_image
from hacnn.data import (IMAGENET_MEAN, IMAGENET_STD, ImageDataset, ImageReadError,
                        Market1501, RandomIdentitySampler, build_test_loaders,
                        build_train_loader, build_transforms, default_workers, read_image)

pytestmark = pytest.mark.filterwarnings("ignore::hacnn.data.base.DatasetCountWarning")


def gradient_image(width: int = 32, height: int = 80) -> Image.Image:
    """An asymmetric image, so flips and shifts change it."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (height, width, 1)),
                          np.broadcast_to(y, (height, width, 1)),
                          np.full((height, width, 1), 90, np.float32)], axis=2)
    return Image.fromarray(rgb.astype(np.uint8))


# --- reading ------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "I;16"])
def test_read_image_converts_to_rgb(tmp_path, mode):
    image = Image.new("RGB", (6, 12), (200, 30, 60)).convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    if mode == "P":
        image.info["transparency"] = 0
    image.save(path, **({"transparency": 0} if mode == "P" else {}))
    out = read_image(path)
    assert (out.mode, out.size) == ("RGB", (6, 12))


def test_read_image_keeps_rgb_pixels(tmp_path):
    path = write_image(tmp_path / "a.png", color=(200, 30, 60))
    assert read_image(path).getpixel((3, 5)) == (200, 30, 60)


def _truncated_jpeg(path: Path) -> Path:
    gradient_image().save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(("make", "reason"), [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg"), "cannot read image"),
    (_truncated_jpeg, "(?i)truncated"),
    (lambda p: None, "No such file"),
])
def test_unreadable_images_raise_with_their_path(tmp_path, make, reason):
    path = tmp_path / "0001_c1s1_000001_01.jpg"
    make(path)
    with pytest.raises(ImageReadError, match=reason) as err:
        read_image(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, OSError)


def test_worker_error_reaches_the_main_process_with_the_path(tmp_path):
    good = write_image(tmp_path / "good.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    data = ImageDataset([(str(good), 0, 0), (str(bad), 1, 0)])
    iterator = iter(DataLoader(data, batch_size=1, num_workers=1))
    assert next(iterator)[1].tolist() == [0]
    with pytest.raises(ImageReadError, match="bad.jpg.*empty file"):
        next(iterator)
    # stop the worker now: left to the garbage collector, PyTorch waits 5 s for it
    iterator._shutdown_workers()


def test_image_dataset_sample(tmp_path):
    path = write_image(tmp_path / "a.jpg", color=(255, 255, 255))
    image, pid, camid, out_path = ImageDataset([(str(path), 4, 2)])[0]
    assert (pid, camid, out_path) == (4, 2, str(path))
    assert image.dtype == torch.float32 and image.shape == (3, 16, 8)
    assert torch.allclose(image, torch.ones_like(image), atol=0.02)


# --- transforms -----------------------------------------------------------------

def test_train_transform_shape_and_range():
    out = build_transforms(train=True, normalize=False)(gradient_image())
    assert out.shape == (3, 160, 64) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    normed = build_transforms(train=True, random_erasing=True)(gradient_image())
    low = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    high = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert normed.shape == (3, 160, 64)
    assert torch.all(normed >= low[:, None, None] - 1e-5)
    assert torch.all(normed <= high[:, None, None] + 1e-5)


def test_eval_transform_is_deterministic_and_exact():
    transform = build_transforms(height=20, width=10, train=False)
    torch.manual_seed(1)
    first = transform(gradient_image())
    torch.manual_seed(2)
    assert torch.equal(first, transform(gradient_image()))
    solid = transform(Image.new("RGB", (7, 13), (255, 0, 128)))
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(IMAGENET_MEAN)) \
        / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(solid, expected[:, None, None].expand(3, 20, 10))
    assert not any(isinstance(t, (v2.RandomHorizontalFlip, v2.RandomCrop))
                   for t in transform.transforms)


def test_train_transform_flips_and_translates():
    image = gradient_image()
    base = build_transforms(train=False, normalize=False)(image)
    flip_only = build_transforms(train=True, pad_crop=False, normalize=False)
    outs = [flip_only(image) for _ in range(20)]
    assert any(torch.equal(o, base) for o in outs)
    assert any(torch.equal(o, base.flip(-1)) for o in outs)
    shift_only = build_transforms(train=True, flip=False, normalize=False)
    shifted = [shift_only(image) for _ in range(20)]
    assert any(not torch.equal(o, base) for o in shifted)
    # padding is 10 pixels: a shifted copy shows at most 10 zero rows / columns
    for out in shifted:
        zero_cols = int((out.abs().sum(dim=(0, 1)) == 0).sum())
        assert zero_cols <= 10


# --- sampler ------------------------------------------------------------------

def items_from_counts(counts: list[int]) -> list[tuple[str, int, int]]:
    return [(f"{pid}_{i}.jpg", pid, i % 2) for pid, n in enumerate(counts) for i in range(n)]


def batches_of(sampler: RandomIdentitySampler) -> list[list[int]]:
    flat = list(iter(sampler))
    assert len(flat) == len(sampler)
    return [flat[i:i + sampler.batch_size] for i in range(0, len(flat), sampler.batch_size)]


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 12), min_size=2, max_size=25),
       k=st.integers(1, 4), p=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_sampler_pk_structure(counts, k, p, seed):
    if len(counts) < p:
        p = len(counts)
    items = items_from_counts(counts)
    sampler = RandomIdentitySampler(items, batch_size=p * k, num_instances=k, seed=seed)
    seen_pids, seen_images = set(), set()
    for batch in batches_of(sampler):
        assert len(batch) == p * k
        per_pid = Counter(items[i][1] for i in batch)
        assert len(per_pid) == p and set(per_pid.values()) == {k}
        for pid in per_pid:  # distinct images unless the identity has fewer than K
            images = [i for i in batch if items[i][1] == pid]
            assert len(set(images)) == min(k, counts[pid])
        seen_pids |= set(per_pid)
        seen_images |= set(batch)
    assert seen_pids == set(range(len(counts)))  # every identity, every epoch
    groups = sum(-(-n // k) for n in counts)
    if max(-(-n // k) for n in counts) <= -(-groups // p):
        assert seen_images == set(range(len(items)))  # and every image


def test_sampler_is_deterministic_per_seed_and_epoch():
    items = items_from_counts([5, 3, 8, 2, 6, 4, 7])
    a = RandomIdentitySampler(items, batch_size=8, num_instances=2, seed=3)
    b = RandomIdentitySampler(items, batch_size=8, num_instances=2, seed=3)
    epoch0, epoch1 = batches_of(a), batches_of(a)  # each pass advances the epoch
    assert epoch0 != epoch1
    b.set_epoch(1)
    assert batches_of(b) == epoch1
    b.set_epoch(0)
    assert batches_of(b) == epoch0 == a.batches(epoch=0)
    other = RandomIdentitySampler(items, batch_size=8, num_instances=2, seed=4)
    assert batches_of(other) != epoch0


def test_sampler_argument_checks():
    items = items_from_counts([3, 3])
    with pytest.raises(ValueError, match="multiple of num_instances"):
        RandomIdentitySampler(items, batch_size=6, num_instances=4)
    with pytest.raises(ValueError, match=r"2 identities cannot fill a batch of 3 distinct identities "
                                         r"\(batch_size 12 / num_instances 4\): train on at least 3"):
        RandomIdentitySampler(items, batch_size=12, num_instances=4)


# --- loaders ------------------------------------------------------------------

@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Market1501:
    root = tmp_path_factory.mktemp("market")
    spec = {"bounding_box_train": [(pid, 1 + i % 6) for pid in (2, 7, 10, 11, 15)
                                   for i in range(pid % 4 + 1)],
            "query": [(1, 1), (3, 2)],
            "bounding_box_test": [(1, 2), (3, 3), (0, 4), (-1, 1)]}
    make_market1501(root, spec=spec)
    return Market1501(root)


def test_train_loader_batches(market):
    loader = build_train_loader(market, batch_size=6, num_instances=2, workers=0, seed=0)
    assert isinstance(loader.sampler, RandomIdentitySampler)
    batches = list(loader)
    assert len(batches) == len(loader) == len(loader.sampler) // 6
    for images, pids, camids, paths in batches:
        assert images.shape == (6, 3, 160, 64) and images.dtype == torch.float32
        assert sorted(Counter(pids.tolist()).values()) == [2, 2, 2]
        assert len(paths) == 6 and camids.dtype == torch.int64
    assert {int(p) for _, pids, _, _ in batches for p in pids} == set(range(5))


def _epoch(loader):
    return [(images, pids) for images, pids, _, _ in loader]


@pytest.mark.parametrize("workers", [0, 1])
def test_train_loader_is_deterministic(market, workers):
    runs = []
    for _ in range(2):
        torch.manual_seed(len(runs))  # the global RNG must not matter
        loader = build_train_loader(market, batch_size=4, num_instances=2, height=32,
                                    width=16, workers=workers, seed=7)
        runs.append((_epoch(loader), _epoch(loader)))
    (a0, a1), (b0, b1) = runs
    for (xa, pa), (xb, pb) in zip(a0 + a1, b0 + b1, strict=True):
        assert torch.equal(pa, pb) and torch.equal(xa, xb)
    assert any(not torch.equal(pa, pb) for (_, pa), (_, pb) in zip(a0, a1))


def test_seeded_dataset_leaves_the_global_rng_alone(market):
    data = ImageDataset(market.train, build_transforms(32, 16, train=True), seed=0)
    state = torch.get_rng_state()
    data[0]
    assert torch.equal(state, torch.get_rng_state())


def test_test_loaders_keep_order_and_are_deterministic(market):
    query_loader, gallery_loader = build_test_loaders(market, batch_size=3, workers=0)
    assert not query_loader.persistent_workers
    paths = [p for _, _, _, batch in gallery_loader for p in batch]
    assert paths == [p for p, _, _ in market.gallery]
    images, pids, camids, _ = next(iter(query_loader))
    assert images.shape == (2, 3, 160, 64)
    assert pids.tolist() == [1, 3] and camids.tolist() == [0, 1]
    again = next(iter(query_loader))[0]
    assert torch.equal(images, again)


def test_default_workers_leave_a_core(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert default_workers() == 1
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert default_workers() == 4
    monkeypatch.setattr("os.cpu_count", lambda: None)
    assert default_workers() == 0


def test_loader_on_real_crops(shared_data):
    data = Market1501(shared_data / "mini_market1501")
    loader = build_train_loader(data, batch_size=8, num_instances=2, workers=0, seed=0)
    images, pids, _, _ = next(iter(loader))
    assert images.shape == (8, 3, 160, 64)
    assert sorted(Counter(pids.tolist()).values()) == [2, 2, 2, 2]
    assert images.std() > 0.1  # real pixels, not a blank


def test_random_erasing_probability():
    """p=0: no erasing step; p=1: every image has one rectangle of 2-33 % set to 0; True is 0.5."""
    def erasing(p):
        return [s for s in build_transforms(train=True, random_erasing=p).transforms
                if isinstance(s, v2.RandomErasing)]

    assert erasing(0.0) == [] and erasing(False) == []
    assert erasing(True)[0].p == 0.5 and erasing(0.3)[0].p == 0.3
    assert [s for s in build_transforms(train=False, random_erasing=1.0).transforms
            if isinstance(s, v2.RandomErasing)] == []
    with pytest.raises(ValueError, match=r"probability in \[0, 1\], got 1.5"):
        build_transforms(random_erasing=1.5)
    torch.manual_seed(0)
    image = gradient_image()
    for _ in range(10):
        out = build_transforms(train=True, pad_crop=False, flip=False, random_erasing=1.0)(image)
        zero = (out == 0).all(0)                                            # (H, W): erased pixels
        assert 0.02 * 160 * 64 <= zero.sum() <= 0.34 * 160 * 64
        rows, cols = zero.nonzero(as_tuple=True)                            # one rectangle, all of it
        assert zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    from hacnn.config import TrainConfig
    assert TrainConfig().random_erasing == 0.0
    with pytest.raises(ValueError, match="random_erasing is a probability"):
        TrainConfig(random_erasing=-0.1)
