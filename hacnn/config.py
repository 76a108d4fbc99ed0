"""Configuration dataclasses.

``HACNNConfig`` holds the architecture with the paper's values as defaults
(Li, Zhu & Gong, "Harmonious Attention Network for Person Re-Identification",
CVPR 2018, Sec. 3 and Fig. 2). A notebook's papermill parameters map onto it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .schedule import SCHEDULES


@dataclass(frozen=True)
class HACNNConfig:
    """Architecture of HA-CNN.

    Defaults follow the paper (Sec. 3, Fig. 2): input 160x64, a 32-channel
    stem, three levels of widths (128, 256, 384), T=4 horizontal-stripe
    regions of 1/4 height, local crops of 24x28, 12x14 and 6x7, 512-d global
    and 512-d local features.

    The ablation switches (``soft_attention``, ``hard_attention``,
    ``local_branch``, ``cross_attention``) reproduce the paper's Table 6
    variants; ``attention_relu`` selects between torchreid's soft-attention
    head (1x1 conv + BN + ReLU before the sigmoid, attention in [0.5, 1): a
    feature is at most halved) and a plain conv + BN + sigmoid (attention in
    (0, 1): features can be switched off).
    """

    num_classes: int = 751
    input_size: tuple[int, int] = (160, 64)
    stem_channels: int = 32
    channels: tuple[int, int, int] = (128, 256, 384)
    feat_dim: int = 512
    num_regions: int = 4
    region_scale: tuple[float, float] = (1.0, 0.25)  # (s_w, s_h) of each region
    local_sizes: tuple[tuple[int, int], ...] = ((24, 28), (12, 14), (6, 7))
    channel_reduction: int = 16
    # Ablation switches (paper Table 6).
    soft_attention: bool = True
    hard_attention: bool = True    # learned translations; False: fixed stripes
    local_branch: bool = True
    cross_attention: bool = True   # CAIL: global crops added to the local stream
    # torchreid's soft-attention head (BN + ReLU before sigmoid). True keeps the
    # model state-dict compatible with torchreid's model-zoo checkpoints.
    attention_relu: bool = True
    normalize_features: bool = True  # L2-normalise each part of the eval feature
    # Weight initialisation: "pytorch" (each layer's own default, as torchreid's HACNN is
    # initialised; the default since issue 16) or "kaiming" (He et al. 2015, fan-out, for every
    # conv; the earlier default, which trained worse on real crops: benchmarks/README.md).
    init: str = "pytorch"
    # Batch-norm statistics of the local stream in training: "batched" (the T regions of a batch
    # together, one (B*T) batch; the default) or "per_region" (each region's own, as torchreid's
    # region-by-region loop computes them; hacnn.blocks.RegionBatchNorm2d). Eval is the same function.
    local_bn: str = "batched"

    def __post_init__(self) -> None:
        h, w = self.input_size
        stride = 2 ** (1 + len(self.channels))  # stem + one InceptionB per level
        if h % stride or w % stride or h <= 0 or w <= 0:
            raise ValueError(
                f"input_size must be positive multiples of {stride} (stem stride 2 "
                f"and one stride-2 Inception-B per level); got {self.input_size}"
            )
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if len(self.local_sizes) != len(self.channels):
            raise ValueError(
                f"local_sizes needs one (h, w) per level ({len(self.channels)}), "
                f"got {len(self.local_sizes)}"
            )
        if self.num_regions < 1:
            raise ValueError(f"num_regions must be >= 1, got {self.num_regions}")
        if self.init not in ("kaiming", "pytorch"):
            raise ValueError(f"init must be 'kaiming' or 'pytorch', got {self.init!r}")
        if self.local_bn not in ("batched", "per_region"):
            raise ValueError(f"local_bn must be 'batched' or 'per_region', got {self.local_bn!r}")
        for c in self.channels:
            if c % 4 or c % self.channel_reduction:
                raise ValueError(
                    f"each level width must be divisible by 4 (Inception streams) and "
                    f"by channel_reduction={self.channel_reduction}; got {self.channels}"
                )
        if self.stem_channels < 1 or self.feat_dim < 1:
            raise ValueError("stem_channels and feat_dim must be >= 1")

    @property
    def feature_dim(self) -> int:
        """Size of the eval feature: global (+ local) embedding."""
        return self.feat_dim * (2 if self.local_branch else 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HACNNConfig":
        tuples = {"input_size", "channels", "region_scale"}
        kw = {k: (tuple(v) if k in tuples else v) for k, v in d.items()}
        if "local_sizes" in kw:
            kw["local_sizes"] = tuple(tuple(s) for s in kw["local_sizes"])
        return cls(**kw)


# Known working recipes for training HA-CNN from scratch (the paper's own
# optimiser settings were not published). A recipe sets any TrainConfig field
# that defaults to None; ``milestones`` are fractions of the run at which the
# learning rate is multiplied by ``gamma``; ``schedule`` and ``warmup``: see
# hacnn.schedule (without ``schedule``: "step" if there are milestones, else
# "constant").
RECIPES: dict[str, dict] = {
    # torchreid's 2018 reproduction (CUHK03 detected 42.4 R1 / 40.9 mAP vs the
    # paper's 41.7 / 38.6): Adam 3e-4, weight decay 5e-4, batch 32, 500 epochs,
    # no decay (`--stepsize -1`), flip + small random translation.
    "adam": {"optimizer": "adam", "lr": 3e-4, "weight_decay": 5e-4, "momentum": 0.9,
             "epochs": 500, "milestones": ()},
    # torchreid author's advice for training from scratch: SGD lr 0.03,
    # momentum 0.9, 300 epochs, lr x0.1 at 50 % and 75 %.
    "sgd": {"optimizer": "sgd", "lr": 0.03, "weight_decay": 5e-4, "momentum": 0.9,
            "epochs": 300, "milestones": (0.5, 0.75)},
    # A schedule over the whole run (issue 16): Adam at a peak of 1e-3, linear
    # warm-up over the first 5 % of the steps, then cosine to 0 at the last
    # step; label smoothing 0.1. The length of the adam recipe, so the two
    # compare at equal length; the schedule fits --epochs or --time-budget.
    "adam-cosine": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 5e-4, "momentum": 0.9,
                    "epochs": 500, "milestones": (), "schedule": "cosine", "warmup": 0.05,
                    "label_smoothing": 0.1},
    # The adam recipe plus the batch-hard triplet loss on each stream's features (weight 1,
    # margin 0.3; Hermans et al. 2017), the one change of the recipe screen that moved the
    # real-image numbers beyond seed noise at a 10-minute budget (issue 16, benchmarks/README.md).
    "adam-triplet": {"optimizer": "adam", "lr": 3e-4, "weight_decay": 5e-4, "momentum": 0.9,
                     "epochs": 500, "milestones": (), "triplet_weight": 1.0},
}
# Fields a recipe may leave out, and their values then.
RECIPE_FALLBACKS = {"warmup": 0.0, "label_smoothing": 0.0, "triplet_weight": 0.0}
AMP_MODES = ("auto", None, "none", "bf16", "fp16")
DATA_CACHES = ("auto", "none", "memory", "device")     # TrainConfig.data_cache (hacnn.data.tensor_cache)


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (``hacnn.training.Trainer``).

    ``recipe`` fills every field left at ``None`` (``epochs``, ``lr``,
    ``weight_decay``, ``momentum``, ``milestones``, ``schedule``, ``warmup``,
    ``label_smoothing``, ``triplet_weight``) from :data:`RECIPES`.
    The default is ``"adam-triplet"``: torchreid's Adam 3e-4 (the one recipe
    with a published reproduction of the paper's numbers) plus a batch-hard
    triplet loss, chosen by measurement one change at a time on real CUHK03
    crops at a fixed budget (issue 16; benchmarks/README.md, "The recipe
    screen"): +12.5 Rank-1 over the same recipe without it, 3 seeds. The
    paper trains with cross-entropy alone: ``recipe="adam"`` is that recipe.
    ``recipe="sgd"`` switches to the torchreid author's SGD schedule,
    ``recipe="adam-cosine"`` to Adam 1e-3 with warm-up + cosine to 0.

    ``schedule``: ``"constant"``, ``"step"`` (x ``gamma`` at ``milestones``),
    ``"cosine"`` or ``"onecycle"``, stepped per optimisation step over the
    planned run (:mod:`hacnn.schedule`); ``warmup``: its warm-up as a
    fraction of the run, in [0, 1). ``time_budget``: seconds of training
    (from the start of ``Trainer.fit``; evaluation not included); the run is
    planned after measuring its throughput, for whichever ends first, the
    budget or ``epochs``, and the plan is saved for ``resume``.

    ``amp``: ``"auto"`` (default) trains under bf16 autocast on a CPU where it
    was measured faster (AVX-512 BF16 on AMD: ~1.5x, the same accuracy within
    seed noise; :func:`hacnn.training.bf16_training_pays`) and in fp32
    elsewhere: an Intel CPU with AVX-512 BF16 but no AMX (bf16 0.8x fp32
    there), Intel's AMX (not measured), CUDA (this small model is launch-bound
    there and autocast does not pay; all measured in benchmarks/README.md); the Trainer resolves it
    (:func:`hacnn.training.resolve_amp`) and saves the resolved value. None or
    ``"none"``: fp32; ``"bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA, with a
    GradScaler). ``channels_last`` (default on) stores activations and
    weights NHWC: the same losses to float32 rounding, about 1.3x faster on
    CPU (oneDNN) and what tensor cores want (``benchmarks/bench_training.py``).
    ``grad_clip``: max global gradient norm (None: off).
    ``data_cache``: ``"none"`` decodes and transforms every image every epoch
    (:func:`hacnn.data.build_train_loader`); ``"memory"`` decodes the training
    images once into a uint8 tensor in host memory, ``"device"`` on the
    training device, and augments whole batches as tensor ops
    (:mod:`hacnn.data.tensor_cache`): the same batches bit for bit, faster.
    ``"auto"`` (default): ``"memory"`` where the cache takes at most half the
    free host memory, else ``"none"`` without a warning (the same batches
    either way, so only the speed differs; measured in
    ``benchmarks/bench_data_cache.py`` and ``bench_budget.py``).
    ``triplet_weight``: weight of the batch-hard triplet loss added to each
    stream (``hacnn.losses.batch_hard_triplet``, margin ``triplet_margin`` on
    L2-normalised features; needs ``num_instances >= 2``); 0: the paper's
    cross-entropy alone.
    ``compile``: train through ``torch.compile`` (inductor) of the network:
    forward and backward are compiled on the first step (tens of seconds on
    a CPU, counted in a time budget) and evaluation stays eager; the weights
    and checkpoints are those of the plain model. Whether it pays is
    measured in ``benchmarks/bench_training.py --compile``.
    ``random_erasing``: the probability that a training image has one random
    rectangle erased to 0 (Zhong et al., AAAI 2020; torchreid's ``random_erase``
    uses 0.5); 0, the default, is the paper's light augmentation (flip and a
    small translation).
    ``eval_every``: evaluate every N epochs and after the last (0: never).
    ``num_instances``: images per identity in a batch (the P x K identity
    sampler of ``hacnn.data``); 2, the default since 2026-12-06: 16 identities
    x 2 images per batch of 32 beat 8 x 4 by +4.6 [+2.6, +6.5] Rank-1 on real
    CUHK03 crops at a 10-minute budget, seeds 0-2, and was level on the
    synthetic benchmark (``benchmarks/README.md``, "Peak lr 1e-3 and the
    triplet with K = 2"); 1 gives plain random batches (needs
    ``triplet_weight=0``). ``batch_size`` and ``lr`` are those of the
    global batch in a multi-process run (torchrun; not scaled with the number
    of processes); ``sync_bn`` normalises batch norm over the global batch
    there (no effect in one process). See :mod:`hacnn.distributed`.
    """

    recipe: str = "adam-triplet"
    epochs: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float | None = None          # SGD momentum (Adam uses beta1 = 0.9)
    milestones: tuple[float, ...] | None = None
    gamma: float = 0.1
    batch_size: int = 32
    num_instances: int = 2
    label_smoothing: float | None = None   # None: the recipe's, else 0
    triplet_weight: float | None = None    # None: the recipe's, else 0 (cross-entropy only, the paper's)
    triplet_margin: float = 0.3
    eval_every: int = 10
    seed: int = 0
    workers: int | None = None             # loader processes; None: hacnn.data's default
    amp: str | None = "auto"
    channels_last: bool = True
    grad_clip: float | None = None
    deterministic: bool = True
    schedule: str | None = None            # None: the recipe's, else "step" with milestones, else "constant"
    warmup: float | None = None            # fraction of the run; None: the recipe's, else 0
    time_budget: float | None = None       # seconds of training; None: epochs only
    sync_bn: bool = False                  # multi-process runs: batch norm over the global batch
    data_cache: str = "auto"               # "auto", "none", "memory" or "device": see above
    compile: bool = False                  # torch.compile the training forward (and so its backward)
    random_erasing: float = 0.0            # probability of random erasing (Zhong et al. 2020); 0: off

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {self.recipe!r}")
        for key, value in {**RECIPE_FALLBACKS, **RECIPES[self.recipe]}.items():
            if key != "optimizer" and getattr(self, key) is None:
                object.__setattr__(self, key, value)
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        if self.schedule is None:
            object.__setattr__(self, "schedule", "step" if self.milestones else "constant")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the run in [0, 1), got {self.warmup}")
        if self.time_budget is not None and not 0 < self.time_budget < math.inf:
            raise ValueError(f"time_budget must be a positive number of seconds (or None), "
                             f"got {self.time_budget}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.data_cache not in DATA_CACHES:
            raise ValueError(f"data_cache must be one of {DATA_CACHES}, got {self.data_cache!r}")
        if self.amp == "none":
            object.__setattr__(self, "amp", None)
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"epochs, batch_size and lr must be positive; got "
                             f"epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr}")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError(f"milestones are fractions of the run in (0, 1), got {self.milestones}")
        if self.num_instances < 1 or self.batch_size % self.num_instances:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of "
                             f"num_instances ({self.num_instances})")
        if self.triplet_weight < 0 or self.triplet_margin <= 0:
            raise ValueError(f"triplet_weight must be >= 0 and triplet_margin > 0, got "
                             f"{self.triplet_weight} and {self.triplet_margin}")
        if self.triplet_weight and self.num_instances < 2:
            raise ValueError(f"triplet_weight > 0 (recipe {self.recipe!r}) needs P x K batches with "
                             f"num_instances >= 2 (images of each identity in a batch), got "
                             f"num_instances={self.num_instances}; for plain random batches set "
                             f"triplet_weight=0 or recipe='adam' (cross-entropy alone)")
        if self.eval_every < 0 or (self.workers is not None and self.workers < 0):
            raise ValueError("eval_every and workers must be >= 0")
        if not 0 <= self.random_erasing <= 1:
            raise ValueError(f"random_erasing is a probability in [0, 1], got {self.random_erasing}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")

    @property
    def optimizer(self) -> str:
        return RECIPES[self.recipe]["optimizer"]

    @property
    def milestone_epochs(self) -> list[int]:
        """Epochs after which the learning rate is multiplied by ``gamma``."""
        return sorted({max(1, round(m * self.epochs)) for m in self.milestones})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        kw = dict(d)
        if kw.get("milestones") is not None:
            kw["milestones"] = tuple(kw["milestones"])
        return cls(**kw)
