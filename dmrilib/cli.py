"""The ``dmri`` command: ``info``, ``simulate``, ``train``, ``predict``, ``evaluate``.

Each subcommand is a thin wrapper around one library function; heavy imports
happen inside the subcommand so ``dmri --help`` is instant.

Exit status and errors:

- 0: done.
- 2: a problem with the input or the machine, printed as one line on stderr,
  ``dmri <command>: error: <file>: <problem>``, never as a traceback. These
  are the library's user-input errors (``ValueError`` and its subclasses
  ``ConfigError``, ``DwiInputError``, ``CheckpointMismatchError``,
  ``IntegrityError``: their messages name the file) and ``OSError`` (missing
  file, permission, full disk: named by its path, or by the command's output
  when the system did not name one).
- 1: an internal error (a bug): the traceback, then a line saying so.
- 130: interrupted (Ctrl-C).

``--debug`` (or ``DMRI_DEBUG=1``) prints the traceback of a user error too.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback
from pathlib import Path

from dmrilib.variants import MODELS

__all__ = ["main", "build_parser"]


def _cmd_info(args: argparse.Namespace) -> int:
    from dmrilib.io import DwiInputError, check_input

    report = check_input(args.path, header_only=args.header_only)
    print(report.text)
    problems = list(report.problems)
    if Path(args.path).is_dir():
        # What `make book BIDS=<path> PROFILE=<config>` will use, with the same checks
        from dmrilib.config import load_profile
        from dmrilib.study import plan_bids

        profile = load_profile(args.config or "quick")
        print()
        try:
            print(plan_bids(args.path, profile).text().replace(
                "What a run on this dataset uses", f"What `make book BIDS=... PROFILE={profile.name}` uses", 1))
        except DwiInputError as exc:
            print(f"A run with profile {profile.name} cannot start: {exc}")
            # a problem of the data for the run asked about; without --config, the plan is a preview
            if args.config is not None:
                problems.append(str(exc))
    if problems:
        raise DwiInputError(f"{args.path}: {len(problems)} problem(s), listed above.")
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
    if args.folds:  # several DAE folds at once, as stacked networks (train.stack_folds' job)
        folds, runs = args.folds, pipeline.run_train_stack(profile, args.model, args.variant, args.folds,
                                                           args.results)
    else:
        folds, runs = [args.fold], [pipeline.run_train(profile, args.model, args.variant, args.fold, args.results)]
    for fold, run in zip(folds, runs):
        print(f"trained {args.model}/{args.variant} fold {fold}: best epoch {run.get('best_epoch')}, "
              f"validation loss {run.get('best_val_loss')}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from dmrilib.scoring import predict_dwi

    out = predict_dwi(args.checkpoint, args.dwi, args.bval, args.bvec, mask_path=args.mask, out_path=args.out)
    print(f"anomaly map written: {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dmrilib.config import load_profile
    from dmrilib.evaluation import evaluate_nifti_maps

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
    debug_help = "print the traceback of an error too (or set DMRI_DEBUG=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    # --debug after the command too; SUPPRESS keeps `dmri --debug info x` from being reset by the subparser
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("info", parents=[common],
                      help="check and describe a DWI file or a BIDS dataset (subjects, shells, grid); "
                           "exit 2 on any problem")
    p.add_argument("path", type=Path, help="4D NIfTI (with .bval/.bvec beside it) or BIDS folder")
    p.add_argument("--header-only", action="store_true",
                   help="check headers and gradient files only, without reading the voxels (faster; "
                        "misses truncated files and NaN voxels)")
    p.add_argument("--config", default=None,
                   help="for a BIDS folder: the profile a run will use (name or YAML path); the plan of "
                        "`make book BIDS=<path> PROFILE=<config>` is printed and a plan that cannot start "
                        "exits 2 (without --config: the plan for quick, printed only)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("simulate", parents=[common], help="simulate a glioma dMRI cohort as a BIDS dataset")
    p.add_argument("--config", default="quick", help="profile name or YAML path (default: quick)")
    p.add_argument("--out", type=Path, required=True, help="output BIDS folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_simulate, writes='out')

    p = sub.add_parser("train", parents=[common], help="train one (model, configuration, fold) of a profile")
    p.add_argument("--config", default="quick", help="profile name or YAML path (default: quick)")
    p.add_argument("--model", choices=MODELS, required=True)
    p.add_argument("--variant", required=True, help="e.g. lsd512-sigmoid or mix-mix-half")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--fold", type=int, default=0)
    which.add_argument("--folds", type=int, nargs="+", metavar="FOLD",
                       help="several DAE folds at once, as stacked networks on one device (dmrilib.stack; "
                            "a GPU speed setting: the runs agree with --fold runs to float32 rounding)")
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="results root; the run goes to <results>/<profile>/runs/... (default: results)")
    p.set_defaults(func=_cmd_train, writes='results')

    p = sub.add_parser("predict", parents=[common], help="anomaly map of a new subject from a trained checkpoint")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--dwi", type=Path, required=True, help="4D NIfTI")
    p.add_argument("--bval", type=Path, default=None, help="default: beside the NIfTI")
    p.add_argument("--bvec", type=Path, default=None, help="default: beside the NIfTI")
    p.add_argument("--mask", type=Path, default=None, help="brain mask (default: estimated from b0)")
    p.add_argument("--out", type=Path, required=True, help="output NIfTI (.nii.gz)")
    p.set_defaults(func=_cmd_predict, writes='out')

    p = sub.add_parser("evaluate", parents=[common], help="evaluate NIfTI anomaly maps against BIDS ground truth")
    p.add_argument("--maps", type=Path, required=True, help="folder of sub-*_anomaly.nii.gz maps")
    p.add_argument("--truth", type=Path, required=True, help="BIDS root with derivatives masks")
    p.add_argument("--model", choices=MODELS, required=True,
                   help="which model made the maps (sets the fixed threshold)")
    p.add_argument("--config", default="quick", help="profile whose evaluation settings to use")
    p.add_argument("--out", type=Path, required=True, help="output CSV")
    p.set_defaults(func=_cmd_evaluate, writes='out')
    return parser


def _version() -> str:
    from dmrilib import __version__

    return __version__


# The library's errors for bad input are ValueErrors with a message that names
# the file (ARCHITECTURE.md, Conventions); OSError is the machine's (a missing
# file, a full disk); EOFError and MemoryError come from truncated files and
# inputs too large for this machine. Anything else is a bug.
_USER_ERRORS = (ValueError, OSError, EOFError, MemoryError)

_OS_HINTS = {
    errno.ENOSPC: "Free disk space there, or write elsewhere.",
    errno.EDQUOT: "Your disk quota is used up: free space, or write elsewhere.",
    errno.EACCES: "Check its permissions.",
}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _os_error_text(exc: OSError, args: argparse.Namespace) -> str:
    """``<path>: <problem> [Errno N]``, with the path the system named or, failing that, the command's output."""
    if exc.errno is None:  # raised by dmrilib with a full message, e.g. FileNotFoundError("<path>: no such ...")
        return str(exc) or type(exc).__name__
    problem = f"{exc.strerror or exc} [Errno {exc.errno}]"
    hint = _OS_HINTS.get(exc.errno, "")
    if exc.filename is not None:
        where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
        return f"{where}: {problem}. {hint}".rstrip()
    # A full disk fails in write(), whose OSError carries no path: name where the command writes.
    output = getattr(args, "writes", None)
    if output is not None:
        return f"{getattr(args, output)}: {problem} while writing the output (--{output}). {hint}".rstrip()
    return f"{problem}. {hint}".rstrip()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dmri``; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("DMRI_DEBUG", "") not in ("", "0")
    prefix = f"dmri {args.command}"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as exc:
        if debug:
            traceback.print_exc()
        text = _os_error_text(exc, args) if isinstance(exc, OSError) else (str(exc) or type(exc).__name__)
        print(f"{prefix}: error: {_one_line(text)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last resort: say it is ours, not the user's
        traceback.print_exc()
        print(f"{prefix}: internal error (a bug in dmrilib, not a problem with your input): "
              f"{type(exc).__name__}: {_one_line(str(exc))}. Please report it with the traceback above.",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
