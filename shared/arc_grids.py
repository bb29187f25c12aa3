"""ARC grids: the text format, a strict parser, and invertible augmentations.

Grids are small integer arrays (colours 0-9). As text a grid is one line per row, one digit per cell
("012\\n340"). The parser accepts exactly that — rows of digits of equal length within ARC's 30x30 —
and returns None for anything else, so a malformed answer is a wrong answer, never a crash.
"""

from __future__ import annotations

import copy
import re
from typing import Callable

import numpy as np

Transform = tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]
MAX_SIDE = 30
_ROW = re.compile(r"^[0-9]+$")


def grid_text(grid: np.ndarray) -> str:
    return "\n".join("".join(str(int(c)) for c in row) for row in grid)


def parse_grid(text: str) -> np.ndarray | None:
    """The first grid in `text` (rows up to the first blank line), or None if it is not a valid grid."""
    lines = []
    for line in text.strip().splitlines():
        line = line.strip()
        if not line:
            break
        lines.append(line)
    if not lines or len(lines) > MAX_SIDE or not all(_ROW.match(x) for x in lines):
        return None
    width = len(lines[0])
    if width > MAX_SIDE or any(len(x) != width for x in lines):
        return None
    return np.array([[int(c) for c in x] for x in lines], dtype=np.int64)


def _anti_transpose(g: np.ndarray) -> np.ndarray:
    return g[::-1, ::-1].T


GEOMETRIC: dict[str, Transform] = {
    "identity": (lambda g: g, lambda g: g),
    "rot90": (lambda g: np.rot90(g, 1), lambda g: np.rot90(g, -1)),
    "rot180": (lambda g: np.rot90(g, 2), lambda g: np.rot90(g, 2)),
    "rot270": (lambda g: np.rot90(g, 3), lambda g: np.rot90(g, -3)),
    "flip_ud": (np.flipud, np.flipud),
    "flip_lr": (np.fliplr, np.fliplr),
    "transpose": (lambda g: g.T, lambda g: g.T),
    "anti_transpose": (_anti_transpose, _anti_transpose),
}

SIZE: dict[str, Transform] = {
    "double": (lambda g: np.kron(g, np.ones((2, 2), dtype=g.dtype)), lambda g: g[::2, ::2]),
    "double_height": (lambda g: np.repeat(g, 2, axis=0), lambda g: g[::2]),
    "double_width": (lambda g: np.repeat(g, 2, axis=1), lambda g: g[:, ::2]),
}


def _chain(geo: str, size: str) -> Transform:
    (gf, gi), (sf, si) = GEOMETRIC[geo], SIZE[size]
    return (lambda g: sf(gf(g)), lambda g: gi(si(g)))


CHAIN: dict[str, Transform] = {f"{geo}+double": _chain(geo, "double")
                               for geo in ("rot90", "rot270", "rot180", "flip_ud", "flip_lr", "transpose")}

REFLECT: dict[str, Transform] = {  # the grid beside its mirror image (marc's Reflect(axis, reverse))
    "mirror_below": (lambda g: np.concatenate([g, np.flipud(g)], 0), lambda g: g[: g.shape[0] // 2]),
    "mirror_above": (lambda g: np.concatenate([np.flipud(g), g], 0), lambda g: g[g.shape[0] // 2:]),
    "mirror_right": (lambda g: np.concatenate([g, np.fliplr(g)], 1), lambda g: g[:, : g.shape[1] // 2]),
    "mirror_left": (lambda g: np.concatenate([np.fliplr(g), g], 1), lambda g: g[:, g.shape[1] // 2:]),
}

REPEAT: dict[str, Transform] = {
    "tile_v": (lambda g: np.tile(g, (2, 1)), lambda g: g[: g.shape[0] // 2]),
    "tile_h": (lambda g: np.tile(g, (1, 2)), lambda g: g[:, : g.shape[1] // 2]),
    "tile": (lambda g: np.tile(g, (2, 2)), lambda g: g[: g.shape[0] // 2, : g.shape[1] // 2]),
}

ALL: dict[str, Transform] = {**GEOMETRIC, **SIZE, **CHAIN, **REFLECT, **REPEAT}
"""Every invertible grid transform (evaluation views use GEOMETRIC; training uses FAMILIES)."""

Augment = Callable[[list[tuple[np.ndarray, np.ndarray]], np.random.Generator], list[tuple[np.ndarray, np.ndarray]]]
"""A test-time-training augmentation of a whole task (its pairs, the query pair last)."""


def _each_grid(transform: Transform) -> Augment:
    forward = transform[0]
    return lambda pairs, rng: [(forward(a), forward(b)) for a, b in pairs]


def translate(pairs: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator) -> list[tuple[np.ndarray,
                                                                                                   np.ndarray]]:
    """marc's RandomTranslateXY: roll each grid by up to 3 cells down and right (at most its size - 1).
    Every pair reads a copy of `rng` and leaves `rng` itself as it was, as theirs (per-example deep
    copies of one RandomState, read for the input and then the output): all inputs share a shift, all
    outputs share another, and so does every task translated before `rng` moves on."""

    def shifted(grid: np.ndarray, draws: np.random.Generator) -> np.ndarray:
        dx, dy = draws.integers(0, min(4, grid.shape[0])), draws.integers(0, min(4, grid.shape[1]))
        return np.roll(grid, (int(dx), int(dy)), axis=(0, 1))

    out = []
    for a, b in pairs:
        draws = copy.deepcopy(rng)
        out.append((shifted(a, draws), shifted(b, draws)))
    return out


FAMILIES: dict[str, dict[str, Augment]] = {
    # the self-edit's four switches, with the official members (few-shot/self-edit.py get_augmenters)
    "basic": {**{k: _each_grid(GEOMETRIC[k]) for k in ("rot90", "rot270", "rot180", "flip_ud", "flip_lr")},
              **{k: _each_grid(v) for k, v in REFLECT.items()}, "translate": translate,
              "transpose": _each_grid(GEOMETRIC["transpose"])},
    "size": {k: _each_grid(v) for k, v in SIZE.items()},
    "chain": {k: _each_grid(v) for k, v in CHAIN.items()},
    "repeat": {k: _each_grid(v) for k, v in REPEAT.items()},
}


def colour_permutation(rng: np.random.Generator) -> np.ndarray:
    """A permutation of colours 1-9; 0 (the background) stays 0."""
    return np.concatenate([[0], rng.permutation(np.arange(1, 10))])
