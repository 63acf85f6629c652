"""Model names and configuration (variant) ids, without torch.

The one owner of the model names: every module and the workflow
(``workflow/Snakefile``) spell them through the constants here (:data:`DAE`,
:data:`RECDISC`, the normative baseline's run :data:`BASELINE` /
:data:`BASELINE_VARIANT`), and show them with :data:`DISPLAY_NAMES`.

A variant id names one of the paper's 24 configurations: for the DAE
``lsd<N>-<linear|sigmoid>`` (latent size and output activation, Table 1),
for RecDiscNet ``<distribution>-<appearance>-<mean>`` of its JOOD noise
(Table 2). Profiles are checked against this grammar when they are loaded,
in every job, including those that never import torch; a misspelt name or
id is refused with a "did you mean" suggestion.
"""
from __future__ import annotations

import difflib
import re
from itertools import product
from typing import Iterable, Literal

__all__ = ["DAE", "RECDISC", "BASELINE", "BASELINE_VARIANT", "MODELS", "DISPLAY_NAMES", "DAE_ACTIVATIONS",
           "DAE_LATENT_SIZES", "DAE_VARIANTS", "DISTRIBUTIONS", "APPEARANCES", "MEANS", "RECDISC_VARIANTS",
           "did_you_mean", "check_model", "parse_dae_variant", "parse_recdisc_variant", "check_variant"]

#: The denoising autoencoder (Table 1).
DAE = "dae"
#: RecDiscNet, trained on JOOD disturbances (Table 2).
RECDISC = "recdisc"
#: The normative DTI baseline's run name (``runs/baseline/normative/``); it is not a network.
BASELINE = "baseline"
#: The normative baseline's one variant, also its key in ``evaluate.fixed_thresholds``.
BASELINE_VARIANT = "normative"
#: Model names: the two networks.
MODELS = (DAE, RECDISC)
#: Names shown in the book and the tables, per model (and the baseline).
DISPLAY_NAMES = {DAE: "DAE", RECDISC: "RecDiscNet", BASELINE: "Normative DTI baseline"}

#: DAE output activations.
DAE_ACTIVATIONS = ("linear", "sigmoid")
#: DAE latent sizes of the paper's grid (Table 1).
DAE_LATENT_SIZES = (16, 32, 64, 128, 256, 512)
#: The paper's 12 DAE configurations (suggestions for a misspelt id; any ``lsd<N>`` is valid).
DAE_VARIANTS = tuple(f"lsd{n}-{a}" for n, a in product(DAE_LATENT_SIZES, DAE_ACTIVATIONS))
#: JOOD noise: value distribution, spatial appearance, mean (full or half).
DISTRIBUTIONS = ("normal", "uniform", "mix")
APPEARANCES = ("random", "directional", "isotropic", "mix")
MEANS = ("full", "half")
#: Every RecDiscNet id of the grammar (its product; the paper's 12 are among them).
RECDISC_VARIANTS = tuple("-".join(p) for p in product(DISTRIBUTIONS, APPEARANCES, MEANS))

_DAE_VARIANT = re.compile(r"^lsd(\d+)-(linear|sigmoid)$")


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """``" (did you mean 'lsd512-sigmoid'?)"`` for the closest of ``choices``, or ``""``.

    >>> did_you_mean("lsd512-sigmod", DAE_VARIANTS)
    " (did you mean 'lsd512-sigmoid'?)"
    """
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_model(model: object) -> str:
    """Return ``model`` if it is one of :data:`MODELS`.

    Raises
    ------
    ValueError
        Naming the models, and the closest one to a misspelt name.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {MODELS}.{did_you_mean(model, MODELS)}")
    return str(model)


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
                         f"(e.g. 'lsd512-sigmoid').{did_you_mean(variant, DAE_VARIANTS)}")
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
            f"(e.g. 'normal-directional-half').{did_you_mean(variant, RECDISC_VARIANTS)}"
        )
    return parts[0], parts[1], parts[2]


def check_variant(model: str, variant: str) -> None:
    """Raise ``ValueError`` unless ``variant`` is a valid id for ``model``."""
    if check_model(model) == DAE:
        parse_dae_variant(variant)
    else:
        parse_recdisc_variant(variant)
