"""The ``dmri`` command: ``info``, ``simulate``, ``train``, ``predict``, ``evaluate``.

Each subcommand is a thin wrapper around one library function; heavy imports
happen inside the subcommand so ``dmri --help`` is instant. User mistakes
(bad files, unknown profiles) are printed as one clear line and exit with
status 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


def _cmd_info(args: argparse.Namespace) -> int:
    from dmrilib.io import describe

    print(describe(args.path))
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from dmrilib.config import load_profile
    from dmrilib.simulate import simulate_cohort

    profile = load_profile(args.config)
    out = simulate_cohort(profile.cohort, args.out, progress=not args.quiet)
    print(f"simulated cohort ({profile.name}): {out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from dmrilib import pipeline
    from dmrilib.config import load_profile

    profile = load_profile(args.config)
    run = pipeline.run_train(profile, args.model, args.variant, args.fold, args.results)
    print(f"trained {args.model}/{args.variant} fold {args.fold}: best epoch {run.get('best_epoch')}, "
          f"validation loss {run.get('best_val_loss')}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from dmrilib.scoring import predict_dwi

    out = predict_dwi(args.checkpoint, args.dwi, args.bval, args.bvec, mask_path=args.mask, out_path=args.out)
    print(f"anomaly map written: {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dmrilib.config import load_profile
    from dmrilib.metrics import evaluate_nifti_maps

    profile = load_profile(args.config)
    out = evaluate_nifti_maps(args.maps, args.truth, args.out, model=args.model, config=profile.evaluate)
    print(f"evaluation table written: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dmri`` (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="dmri",
        description="Diffusion MRI anomaly detection (Weninger, Ecke et al., Sci Rep 2023), reproduced.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("info", help="describe a DWI file or a BIDS dataset (subjects, shells, grid)")
    p.add_argument("path", type=Path, help="4D NIfTI (with .bval/.bvec beside it) or BIDS folder")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("simulate", help="simulate a glioma dMRI cohort as a BIDS dataset")
    p.add_argument("--config", default="quick", help="profile name or YAML path (default: quick)")
    p.add_argument("--out", type=Path, required=True, help="output BIDS folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("train", help="train one (model, configuration, fold) of a profile")
    p.add_argument("--config", default="quick", help="profile name or YAML path (default: quick)")
    p.add_argument("--model", choices=("dae", "recdisc"), required=True)
    p.add_argument("--variant", required=True, help="e.g. lsd512-sigmoid or mix-mix-half")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="results root; the run goes to <results>/<profile>/runs/... (default: results)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="anomaly map of a new subject from a trained checkpoint")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--dwi", type=Path, required=True, help="4D NIfTI")
    p.add_argument("--bval", type=Path, default=None, help="default: beside the NIfTI")
    p.add_argument("--bvec", type=Path, default=None, help="default: beside the NIfTI")
    p.add_argument("--mask", type=Path, default=None, help="brain mask (default: estimated from b0)")
    p.add_argument("--out", type=Path, required=True, help="output NIfTI (.nii.gz)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("evaluate", help="evaluate NIfTI anomaly maps against BIDS ground truth")
    p.add_argument("--maps", type=Path, required=True, help="folder of sub-*_anomaly.nii.gz maps")
    p.add_argument("--truth", type=Path, required=True, help="BIDS root with derivatives masks")
    p.add_argument("--model", choices=("dae", "recdisc"), required=True,
                   help="which model made the maps (sets the fixed threshold)")
    p.add_argument("--config", default="quick", help="profile whose evaluation settings to use")
    p.add_argument("--out", type=Path, required=True, help="output CSV")
    p.set_defaults(func=_cmd_evaluate)
    return parser


def _version() -> str:
    from dmrilib import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dmri``; returns the exit status."""
    args = build_parser().parse_args(argv)
    from dmrilib.config import ConfigError

    user_errors: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError)
    try:
        from dmrilib.io import DwiInputError

        user_errors += (DwiInputError,)
    except ImportError:  # io not importable: let its own error surface below
        pass
    try:
        return args.func(args)
    except user_errors as exc:
        print(f"dmri {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
