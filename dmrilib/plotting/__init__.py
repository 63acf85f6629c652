"""Figures of the paper, each a function returning a matplotlib Figure.

- :mod:`dmrilib.plotting.cohort`: the simulated cohort (slices, tissue histograms);
- :mod:`dmrilib.plotting.noise`: the JOOD noise distributions (paper Fig. 3);
- :mod:`dmrilib.plotting.results`: ROC curves, score densities (Fig. 4),
  qualitative panels (Figs. 5-8), follow-up (Fig. 9), Dice per rule;
- :mod:`dmrilib.plotting.overlay`: one patient's anomaly maps over their scan.

The functions draw only; :mod:`dmrilib.figures` decides what to show and
writes the files.
"""
__all__ = ["cohort", "noise", "overlay", "results"]

from dmrilib.plotting import cohort, noise, overlay, results  # noqa: E402  (submodules are the API)
