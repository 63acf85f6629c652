"""Model names and configuration (variant) ids, without torch.

A variant id names one of the paper's 24 configurations: for the DAE
``lsd<N>-<linear|sigmoid>`` (latent size and output activation, Table 1),
for RecDiscNet ``<distribution>-<appearance>-<mean>`` of its JOOD noise
(Table 2). Profiles are checked against this grammar when they are loaded,
in every job, including those that never import torch.
"""
from __future__ import annotations

import re
from typing import Literal

__all__ = ["MODELS", "DAE_ACTIVATIONS", "DISTRIBUTIONS", "APPEARANCES", "MEANS", "parse_dae_variant",
           "parse_recdisc_variant", "check_variant"]

#: Model names.
MODELS = ("dae", "recdisc")
#: DAE output activations.
DAE_ACTIVATIONS = ("linear", "sigmoid")
#: JOOD noise: value distribution, spatial appearance, mean (full or half).
DISTRIBUTIONS = ("normal", "uniform", "mix")
APPEARANCES = ("random", "directional", "isotropic", "mix")
MEANS = ("full", "half")

_DAE_VARIANT = re.compile(r"^lsd(\d+)-(linear|sigmoid)$")


def parse_dae_variant(variant: str) -> tuple[int, Literal["linear", "sigmoid"]]:
    """``"lsd512-sigmoid"`` -> ``(512, "sigmoid")``.

    Raises
    ------
    ValueError
        If ``variant`` is not ``lsd<N>-linear`` or ``lsd<N>-sigmoid``.
    """
    match = _DAE_VARIANT.match(str(variant))
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"DAE variant {variant!r} is not of the form 'lsd<N>-linear' or 'lsd<N>-sigmoid' "
                         "(e.g. 'lsd512-sigmoid').")
    return int(match.group(1)), match.group(2)  # type: ignore[return-value]


def parse_recdisc_variant(variant: str) -> tuple[str, str, str]:
    """``"mix-mix-half"`` -> ``("mix", "mix", "half")`` (distribution, appearance, mean).

    Raises
    ------
    ValueError
        If ``variant`` is not ``<distribution>-<appearance>-<mean>``.
    """
    parts = str(variant).split("-")
    if (len(parts) != 3 or parts[0] not in DISTRIBUTIONS or parts[1] not in APPEARANCES
            or parts[2] not in MEANS):
        raise ValueError(
            f"RecDiscNet/JOOD variant {variant!r} is not '<distribution>-<appearance>-<mean>' with "
            f"distribution in {DISTRIBUTIONS}, appearance in {APPEARANCES}, mean in {MEANS} "
            "(e.g. 'normal-directional-half')."
        )
    return parts[0], parts[1], parts[2]


def check_variant(model: str, variant: str) -> None:
    """Raise ``ValueError`` unless ``variant`` is a valid id for ``model``."""
    if model == "dae":
        parse_dae_variant(variant)
    elif model == "recdisc":
        parse_recdisc_variant(variant)
    else:
        raise ValueError(f"unknown model {model!r}; choose one of {MODELS}.")
