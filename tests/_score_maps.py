"""A small score map, lesion and evaluation mask that the metrics and evaluation tests share."""
from __future__ import annotations

import numpy as np

SHAPE = (12, 14, 10)


def score_case(seed: int = 0, shape=SHAPE, ties: bool = False):
    """A score map that is higher, on average, inside a box-shaped lesion, and a mask one voxel inside the edge."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    mask[1:-1, 1:-1, 1:-1] = True
    truth = np.zeros(shape, bool)
    truth[3:7, 4:9, 3:7] = True
    score = rng.random(shape) * 0.5 + truth * rng.random(shape) * 0.6
    if ties:
        score = np.round(score, 1)
    return score.astype(np.float32), truth, mask
