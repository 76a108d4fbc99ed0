"""Convert between torchreid's ``HACNN`` state dicts and :class:`hacnn.HACNN`.

torchreid's model zoo (Market-1501, DukeMTMC-reID, MSMT17 checkpoints) is what
most users already have. Both models compute the same function (same layers,
same order of operations); only the names differ, so conversion is a pure
renaming: ``inception1.0`` <-> ``global_levels.0.0``, ``ha2.soft_attn.spatial_attn``
<-> ``attention.1.soft.spatial``, ``local_conv3`` <-> ``local_levels.2``, ...
torchreid's checkpoints wrap the weights as ``{"state_dict": ...}`` and may
carry a DataParallel ``module.`` prefix; both are handled.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import torch

# (torchreid pattern, hacnn pattern); level numbers are 1-based in torchreid.
_RULES = [
    (r"conv\.", r"stem."),
    (r"inception(\d)\.", r"global_levels.{L}."),
    (r"ha(\d)\.soft_attn\.spatial_attn\.", r"attention.{L}.soft.spatial."),
    (r"ha(\d)\.soft_attn\.channel_attn\.", r"attention.{L}.soft.channel."),
    (r"ha(\d)\.soft_attn\.conv\.", r"attention.{L}.soft.conv."),
    (r"ha(\d)\.hard_attn\.fc\.", r"attention.{L}.hard.fc."),
    (r"local_conv(\d)\.", r"local_levels.{L}."),
    (r"(fc_global|classifier_global|fc_local|classifier_local)\.", r"{G}."),
]
_INVERSE = [
    (r"stem\.", "conv."),
    (r"global_levels\.(\d)\.", "inception{L}."),
    (r"attention\.(\d)\.soft\.spatial\.", "ha{L}.soft_attn.spatial_attn."),
    (r"attention\.(\d)\.soft\.channel\.", "ha{L}.soft_attn.channel_attn."),
    (r"attention\.(\d)\.soft\.conv\.", "ha{L}.soft_attn.conv."),
    (r"attention\.(\d)\.hard\.fc\.", "ha{L}.hard_attn.fc."),
    (r"local_levels\.(\d)\.", "local_conv{L}."),
    (r"(fc_global|classifier_global|fc_local|classifier_local)\.", "{G}."),
]


def _rename(key: str, rules, shift: int) -> str:
    for pattern, template in rules:
        m = re.match(pattern, key)
        if m:
            g = m.group(1) if m.groups() else ""
            level = str(int(g) + shift) if g.isdigit() else ""
            return template.format(L=level, G=g) + key[m.end():]
    raise KeyError(f"unexpected HACNN parameter name {key!r}: not part of the HA-CNN architecture")


def _unwrap(state_dict: dict) -> dict:
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def from_torchreid(state_dict: dict) -> OrderedDict:
    """torchreid ``HACNN`` state dict (or checkpoint dict) -> ``hacnn.HACNN`` state dict."""
    sd = _unwrap(state_dict)
    return OrderedDict((_rename(k, _RULES, -1), v) for k, v in sd.items())


def to_torchreid(state_dict: dict) -> OrderedDict:
    """``hacnn.HACNN`` state dict -> torchreid ``HACNN`` state dict."""
    sd = _unwrap(state_dict)
    return OrderedDict((_rename(k, _INVERSE, +1), v) for k, v in sd.items())


def num_classes_of(state_dict: dict) -> int:
    """Number of identities a (converted or native) state dict was trained on."""
    return int(state_dict["classifier_global.weight"].shape[0])


def load_torchreid_checkpoint(path: str | Path) -> OrderedDict:
    """Read a torchreid checkpoint file safely (``weights_only=True``) and convert it."""
    from .checkpoint import safe_load

    return from_torchreid(safe_load(path))
