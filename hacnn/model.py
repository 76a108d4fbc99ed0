"""HA-CNN: Harmonious Attention Convolutional Neural Network (paper Sec. 3).

A shared 3x3 stem feeds a global stream of three levels (Inception-A then
Inception-B, widths 128/256/384), each gated by a Harmonious Attention
module. At every level the module's hard regional attention crops T=4
regions from that level's input; a local stream (one Inception-B per level,
weights shared across regions) processes them as one (B*T) batch, and the
cross-attention interaction (CAIL, Sec. 3.2) adds the cropped global
features to the local stream's own before each local level. Heads: global
average pooling -> FC 512 (global) and the T region features concatenated
-> FC 512 (local), each with an identity classifier (Sec. 3.3).

In training mode the local stream's batch norms see all T regions of the
batch at once (torchreid runs the regions one by one, so its batch
statistics are per region; ``HACNNConfig(local_bn="per_region")`` computes
those); in eval mode both compute exactly the same function, and
``hacnn.convert`` moves weights between them.

Notebook 05 builds the whole model; notebooks 01-04 its parts.
"""
from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention import HarmoniousAttention
from .blocks import ConvBlock, InceptionA, InceptionB, per_region_batch_norms
from .config import HACNNConfig


class HACNNOutput(NamedTuple):
    """What a training-mode forward returns (local fields are None without a local branch)."""

    global_logits: torch.Tensor            # (B, num_classes)
    local_logits: torch.Tensor | None      # (B, num_classes)
    global_features: torch.Tensor          # (B, feat_dim)
    local_features: torch.Tensor | None    # (B, feat_dim)


class FeatureMaps(NamedTuple):
    """Output of ``forward_features``: the last level of each stream."""

    global_map: torch.Tensor               # (B, C3, h, w)
    local_maps: torch.Tensor | None        # (B, T, C3, h', w')


class LevelExplanation(NamedTuple):
    """Per-level attention for visualisation (``HACNN.explain``)."""

    spatial: torch.Tensor | None           # (B, H_l, W_l) spatial attention branch
    soft: torch.Tensor | None              # (B, H_l, W_l) soft attention, mean over channels
    theta: torch.Tensor                    # (B, T, 2) region translations
    boxes: torch.Tensor                    # (B, T, 4) regions as x0, y0, x1, y1 input pixels


class HACNN(nn.Module):
    """HA-CNN (Li, Zhu & Gong, CVPR 2018).

    ``HACNN(num_classes)`` with the paper's defaults, or pass a
    :class:`HACNNConfig` and/or keyword overrides of its fields.

    * ``model.train()(x)`` -> :class:`HACNNOutput` (logits and embeddings).
    * ``model.eval()(x)`` -> (B, 1024) test feature: global (+) local, each
      L2-normalised (``normalize_features``).
    * ``model.explain(x)`` -> one :class:`LevelExplanation` per level.
    """

    def __init__(self, num_classes: int | None = None, config: HACNNConfig | None = None, **overrides):
        super().__init__()
        cfg = config or HACNNConfig()
        if num_classes is not None:
            overrides["num_classes"] = num_classes
        self.config = cfg = replace(cfg, **overrides)
        widths = cfg.channels
        inputs = (cfg.stem_channels,) + tuple(widths[:-1])
        self.stem = ConvBlock(3, cfg.stem_channels, 3, s=2, p=1)
        self.global_levels = nn.ModuleList(
            nn.Sequential(InceptionA(i, o), InceptionB(o, o)) for i, o in zip(inputs, widths)
        )
        self.attention = nn.ModuleList(
            HarmoniousAttention(o, cfg.num_regions, cfg.region_scale, cfg.channel_reduction,
                                soft=cfg.soft_attention, relu=cfg.attention_relu,
                                # translations are learned only where a crop is used
                                hard=cfg.hard_attention and cfg.local_branch and (lvl == 0 or cfg.cross_attention))
            for lvl, o in enumerate(widths)
        )
        self.fc_global = nn.Sequential(nn.Linear(widths[-1], cfg.feat_dim), nn.BatchNorm1d(cfg.feat_dim), nn.ReLU())
        self.classifier_global = nn.Linear(cfg.feat_dim, cfg.num_classes)
        if cfg.local_branch:
            self.local_levels = nn.ModuleList(InceptionB(i, o) for i, o in zip(inputs, widths))
            if cfg.local_bn == "per_region":               # each region's own batch statistics
                per_region_batch_norms(self.local_levels, cfg.num_regions)
            self.fc_local = nn.Sequential(
                nn.Linear(widths[-1] * cfg.num_regions, cfg.feat_dim), nn.BatchNorm1d(cfg.feat_dim), nn.ReLU()
            )
            self.classifier_local = nn.Linear(cfg.feat_dim, cfg.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """``config.init``: "kaiming" re-draws every conv; "pytorch" keeps each layer's default."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and self.config.init == "kaiming":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for ha in self.attention:
            ha.hard.reset_parameters()

    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != tuple(self.config.input_size):
            raise ValueError(
                f"HACNN expects images of shape (B, 3, {self.config.input_size[0]}, "
                f"{self.config.input_size[1]}), got {tuple(x.shape)}"
            )

    def forward_features(self, x: torch.Tensor, record: list | None = None) -> FeatureMaps:
        """Stem, three HA levels and the local stream (CAIL). ``record`` collects per-level tensors."""
        self._check_input(x)
        cfg = self.config
        B = x.shape[0]
        x = self.stem(x)                                   # (B, 32, H/2, W/2)
        local = None
        for level, (block, ha) in enumerate(zip(self.global_levels, self.attention)):
            g = block(x)                                   # (B, C_l, H_l, W_l)
            soft, theta = ha(g)                            # (B, C_l, H_l, W_l), (B, T, 2)
            if cfg.local_branch:
                if local is None or cfg.cross_attention:
                    crop = ha.hard.crop(x, theta, cfg.local_sizes[level])   # (B*T, C_{l-1}, h_l, w_l)
                    local = crop if local is None else crop + local         # CAIL: X_L + X_G
                local = self.local_levels[level](local)    # (B*T, C_l, h_l/2, w_l/2)
            if record is not None:
                record.append((ha, g, soft, theta))
            x = g * soft if soft is not None else g        # soft-attended global features
        local_maps = None if local is None else local.view(B, cfg.num_regions, *local.shape[1:])
        return FeatureMaps(x, local_maps)

    def forward_head(self, feats: FeatureMaps, pre_logits: bool = False):
        """Pool + FC embeddings (+ classifiers). ``pre_logits`` returns (global, local) embeddings."""
        g = self.fc_global(feats.global_map.mean((2, 3)))                    # (B, 512)
        l = None
        if feats.local_maps is not None:
            l = self.fc_local(feats.local_maps.mean((3, 4)).flatten(1))      # (B, 512)
        if pre_logits:
            return g, l
        local_logits = self.classifier_local(l) if l is not None else None
        return HACNNOutput(self.classifier_global(g), local_logits, g, l)

    def embed(self, g: torch.Tensor, l: torch.Tensor | None) -> torch.Tensor:
        """Test feature: global (+) local, each L2-normalised if configured."""
        parts = [g] if l is None else [g, l]
        if self.config.normalize_features:
            parts = [F.normalize(p, dim=1) for p in parts]
        return torch.cat(parts, dim=1)                                        # (B, 1024)

    def forward(self, x: torch.Tensor):
        feats = self.forward_features(x)
        if self.training:
            return self.forward_head(feats)
        return self.embed(*self.forward_head(feats, pre_logits=True))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace both identity classifiers (e.g. to fine-tune on another dataset)."""
        self.config = replace(self.config, num_classes=num_classes)
        dev = self.classifier_global.weight.device
        self.classifier_global = nn.Linear(self.config.feat_dim, num_classes, device=dev)
        if self.config.local_branch:
            self.classifier_local = nn.Linear(self.config.feat_dim, num_classes, device=dev)

    @torch.no_grad()
    def explain(self, x: torch.Tensor) -> list[LevelExplanation]:
        """Soft attention maps and hard-region boxes of each level, for notebook 07."""
        record: list = []
        self.forward_features(x, record)
        out = []
        for ha, g, soft, theta in record:
            spatial = ha.soft.spatial(g)[:, 0] if ha.soft is not None else None
            soft_map = soft.float().mean(1) if soft is not None else None
            out.append(LevelExplanation(spatial, soft_map, theta.float(), ha.hard.boxes(theta, x.shape[-2:])))
        return out
