"""Person and camera ids from image file names: the benchmarks' schemes, or your pattern.

Without a pattern, :func:`parse_ids` reads ``(pid, 0-based camera)`` from the
names of the benchmarks, with their readers' own patterns:

- Market-1501 ``PPPP_cCsS_FFFFFF_NN.jpg`` (pid -1: a distractor);
- DukeMTMC-reID ``PPPP_cC_fFFFFFFF.jpg``;
- CUHK03-NP ``PPPP_cC_N.png``;
- MSMT17 ``PPPP_SSS_CC_<date><time>_FFFF_N.jpg`` (V1 and V2, e.g.
  ``0000_011_01_0303morning_0015_0.jpg``; PPPP is the pid of the release's
  list files within its split, so train and test pids overlap).

``pattern`` is a regular expression with named groups ``identity``
(required) and ``camera`` (optional), checked and matched as ``--dataset
folder``'s (:func:`hacnn.data.folder.compile_pattern`, the whole name or the
name without its extension): pid = the integer ``identity``, camid = the
integer ``camera`` as written (no 1-based shift; -1 without the group). A
name the pattern does not match has no ids; :func:`names_ids` refuses a
pattern that matches none.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from .base import DatasetLayoutError
from .folder import compile_pattern, match_name

__all__ = ["parse_ids", "names_ids"]
_INTEGER = re.compile(r"-?\d+")


def _benchmarks() -> tuple[tuple[re.Pattern, int, int], ...]:
    """(name regex, pid group, 1-based camera group) of each benchmark's reader."""
    from .cuhk03 import NP_PATTERN
    from .dukemtmcreid import DukeMTMCreID
    from .market1501 import Market1501
    from .msmt17 import NAME_PATTERN

    return ((re.compile(Market1501.name_pattern), 1, 2), (re.compile(DukeMTMCreID.name_pattern), 1, 2),
            (re.compile(NP_PATTERN), 1, 2), (NAME_PATTERN, 1, 3))


def _integer(groups: dict[str, str], group: str, name: str) -> int:
    text = groups[group]
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"{name!r}: the pattern's {group} {text!r} is not an integer (extract "
                         rf"stores integer ids; capture the digits, e.g. (?P<{group}>\d+))")
    return int(text)


def parse_ids(name: str, pattern: str | re.Pattern | None = None) -> tuple[int, int] | None:
    """(pid, camid) from a file name (module docstring), or None when it carries none."""
    name = Path(name).name
    if pattern is None:
        for regex, pid, camera in _benchmarks():
            match = regex.fullmatch(name)
            if match is not None:
                return int(match.group(pid)), int(match.group(camera)) - 1
        return None
    groups = match_name(re.compile(pattern), name)
    if groups is None or "identity" not in groups:
        return None
    return _integer(groups, "identity", name), _integer(groups, "camera", name) if "camera" in groups else -1


def names_ids(names: Sequence[str | Path], pattern: str | re.Pattern | None = None,
              where: str = "") -> list[tuple[int, int] | None]:
    """:func:`parse_ids` of each name; a ``pattern`` is checked first.

    Errors: a pattern without an ``identity`` group (ValueError) or that
    matches none of the names (:class:`DatasetLayoutError`); names it does
    not match are counted in one warning and keep no ids.
    """
    if pattern is None:
        return [parse_ids(str(n)) for n in names]
    regex = compile_pattern(pattern, "pattern")
    ids = [parse_ids(str(n), regex) for n in names]
    missed = [Path(n).name for n, i in zip(names, ids) if i is None]
    if names and len(missed) == len(names):
        raise DatasetLayoutError(f"pattern {regex.pattern!r} matches none of the {len(names)} file names"
                                 f"{where}, e.g. {missed[0]!r}: it must match a whole name (or the name "
                                 r"without its extension), e.g. (?P<identity>\d+)_c(?P<camera>\d+)_.*")
    if missed:
        warnings.warn(f"pattern {regex.pattern!r} does not match {len(missed)} of {len(names)} file names"
                      f"{where}, e.g. {missed[0]!r}: they are kept without ids (pid and camid -1)",
                      RuntimeWarning, stacklevel=2)
    return ids
