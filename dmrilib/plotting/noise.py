"""The paper's Fig. 3: the JOOD noise distributions."""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from dmrilib.noise import JoodConfig

__all__ = ["plot_noise_distributions"]


def plot_noise_distributions(samples: Mapping[str, np.ndarray] | None = None, *, config: "JoodConfig | None" = None,
                             bins: int = 80, seed: int = 0) -> Figure:
    """Histogram densities of the normal and uniform JOOD noise, full and half mean.

    Parameters
    ----------
    samples : mapping, optional
        Output of :func:`dmrilib.noise.noise_distribution_samples`
        (computed with ``seed`` and ``config`` when omitted).
    config : JoodConfig, optional
        The noise configuration shown (uniform width, isotropic mode; the
        figure's title says which); default: the authors' code (width 0.24,
        one isotropic value per patch). Pass the one training used, e.g.
        ``JoodConfig.from_train_config(variant, profile.train)``.
    bins : int
        Histogram bins over [0, 1], widened to the samples' range (the
        authors' insertion does not clip: negative draws add to the signal).
    seed : int

    Returns
    -------
    matplotlib.figure.Figure
        Two panels (normal, uniform), each with the full- and half-mean noise.
    """
    from dmrilib.noise import noise_distribution_label, noise_distribution_samples

    if samples is None:
        samples = noise_distribution_samples(config=config, seed=seed)
    fig = Figure(figsize=(8, 3.3), layout="constrained")
    fig.suptitle(noise_distribution_label(config), fontsize="medium")
    axes = fig.subplots(1, 2, sharey=True)
    every = np.concatenate([np.ravel(v) for v in samples.values()])
    low, high = min(0.0, float(every.min())), max(1.0, float(every.max()))
    edges = np.linspace(low, high, bins + 1)
    for ax, dist in zip(axes, ("normal", "uniform")):
        for mean, colour in (("full", "tab:blue"), ("half", "tab:orange")):
            values = samples[f"{dist}-{mean}"]
            ax.hist(values, bins=edges, density=True, histtype="stepfilled", alpha=0.5, color=colour,
                    label=f"{mean} mean ({np.mean(values):.2f})")
        ax.set_title(dist.capitalize())
        ax.set_xlabel("attenuation of the disturbance")
        ax.set_xlim(low, high)
        ax.legend(frameon=False)
    axes[0].set_ylabel("density")
    return fig
