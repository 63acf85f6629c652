"""The paper's Fig. 3: the JOOD noise distributions."""
from __future__ import annotations

from typing import Mapping

import numpy as np
from matplotlib.figure import Figure

__all__ = ["plot_noise_distributions"]


def plot_noise_distributions(samples: Mapping[str, np.ndarray] | None = None, *, bins: int = 80,
                             seed: int = 0) -> Figure:
    """Histogram densities of the normal and uniform JOOD noise, full and half mean.

    Parameters
    ----------
    samples : mapping, optional
        Output of :func:`dmrilib.noise.noise_distribution_samples`
        (computed with ``seed`` when omitted).
    bins : int
        Histogram bins over [0, 1].
    seed : int

    Returns
    -------
    matplotlib.figure.Figure
        Two panels (normal, uniform), each with the full- and half-mean noise.
    """
    if samples is None:
        from dmrilib.noise import noise_distribution_samples

        samples = noise_distribution_samples(seed=seed)
    fig = Figure(figsize=(8, 3), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for ax, dist in zip(axes, ("normal", "uniform")):
        for mean, colour in (("full", "tab:blue"), ("half", "tab:orange")):
            values = samples[f"{dist}-{mean}"]
            ax.hist(values, bins=edges, density=True, histtype="stepfilled", alpha=0.5, color=colour,
                    label=f"{mean} mean ({np.mean(values):.2f})")
        ax.set_title(dist.capitalize())
        ax.set_xlabel("attenuation of the disturbance")
        ax.set_xlim(0, 1)
        ax.legend(frameon=False)
    axes[0].set_ylabel("density")
    return fig
