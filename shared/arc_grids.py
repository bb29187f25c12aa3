"""ARC grids: the text format, a strict parser, and invertible augmentations.

Grids are small integer arrays (colours 0-9). As text a grid is one line per row, one digit per cell
("012\\n340"). The parser accepts exactly that — rows of digits of equal length within ARC's 30x30 —
and returns None for anything else, so a malformed answer is a wrong answer, never a crash.
"""

from __future__ import annotations

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


CHAIN: dict[str, Transform] = {f"{geo}+{size}": _chain(geo, size)
                               for geo, size in [("rot90", "double"), ("flip_lr", "double_height"),
                                                 ("transpose", "double_width"), ("rot180", "double")]}

REPEAT: dict[str, Transform] = {
    "tile": (lambda g: np.tile(g, (2, 2)), lambda g: g[: g.shape[0] // 2, : g.shape[1] // 2]),
    "tile_h": (lambda g: np.tile(g, (1, 2)), lambda g: g[:, : g.shape[1] // 2]),
}

FAMILIES: dict[str, dict[str, Transform]] = {
    "basic": {k: v for k, v in GEOMETRIC.items() if k != "identity"},
    "size": SIZE,
    "chain": CHAIN,
    "repeat": REPEAT,
}
ALL: dict[str, Transform] = {**GEOMETRIC, **SIZE, **CHAIN, **REPEAT}


def colour_permutation(rng: np.random.Generator) -> np.ndarray:
    """A permutation of colours 1-9; 0 (the background) stays 0."""
    return np.concatenate([[0], rng.permutation(np.arange(1, 10))])
