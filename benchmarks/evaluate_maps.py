"""Speed of the evaluation of one anomaly map with every threshold rule.

Times ``evaluate_map`` (5 paper rules + 3 healthy-FPR rows, Dice with and
without opening) and ``detection_scores`` (AUROC + AP) on one synthetic map at
the paper's network grid (64x80x64) and input grid (90x90x54), and projects the
time for the paper grid (24 configurations x 7 folds x 32 patients).

Run: ``OMP_NUM_THREADS=1 python benchmarks/evaluate_maps.py [--repeats 5]``
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from dmrilib import metrics

N_MAPS_PAPER = 24 * 7 * 32


def _synthetic(shape: tuple[int, int, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    idx = np.indices(shape, dtype=np.float32)
    centre = np.array(shape, dtype=np.float32).reshape(3, 1, 1, 1) / 2
    r = np.sqrt((((idx - centre) / (centre * 0.8)) ** 2).sum(axis=0))
    brain = r < 1.0
    mask = brain & (rng.random(shape) > 0.15)  # WM+GM: brain minus scattered "CSF"
    lesion = np.sqrt((((idx - centre * 1.2) / 6.0) ** 2).sum(axis=0)) < 1.0
    score = (rng.gamma(1.5, 0.05, shape) + lesion * rng.normal(0.4, 0.1, shape)).astype(np.float32)
    return np.where(brain, score, 0).astype(np.float32), lesion & mask, mask, brain


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, numpy {np.__version__}")
    for shape in ((64, 80, 64), (90, 90, 54)):
        score, truth, mask, brain = _synthetic(shape)
        healthy = metrics.healthy_fpr_thresholds(score[None], mask[None], (0.01, 0.05, 0.10))
        cfg = metrics.EvalConfig()
        t_eval = _time(lambda: metrics.evaluate_map(score, truth, mask, model="dae", config=cfg,
                                                   healthy_thresholds=healthy, brain_mask=brain), args.repeats)
        t_det = _time(lambda: metrics.detection_scores(score, truth, mask), args.repeats)
        t_open = _time(lambda: metrics.opening(score > 0.2, 3), args.repeats)
        total = t_eval + t_det
        print(f"{shape}: mask {int(mask.sum())} voxels | evaluate_map (8 rules) {t_eval * 1e3:.1f} ms | "
              f"detection_scores {t_det * 1e3:.1f} ms | one opening {t_open * 1e3:.1f} ms | "
              f"per map {total * 1e3:.1f} ms -> paper grid ({N_MAPS_PAPER} maps) {total * N_MAPS_PAPER / 60:.1f} min")


if __name__ == "__main__":
    main()
