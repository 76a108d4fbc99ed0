"""Configuration dataclasses.

``HACNNConfig`` holds the architecture with the paper's values as defaults
(Li, Zhu & Gong, "Harmonious Attention Network for Person Re-Identification",
CVPR 2018, Sec. 3 and Fig. 2). A notebook's papermill parameters map onto it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
    head (1x1 conv + BN + ReLU before the sigmoid, attention in [0.5, 1)) and
    the paper's plain conv + sigmoid (attention in (0, 1)).
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
