"""Run one workflow notebook with papermill and stop its kernel at once when it ends.

Same as ``papermill NOTEBOOK OUTPUT -p NAME VALUE ...`` (parameters typed
the way papermill's ``-p`` types them), except that the kernel is stopped
immediately after the last cell instead of being asked to shut down: a
kernel that has used torch takes ~3 s to exit gracefully on the 2-core
machines, ~70 s over the 24 training jobs of the quick book. Every result
is written (atomically) by the cells themselves, so nothing is lost.

Before the notebook starts, the job can tidy the folders it owns:

- ``--clean-temp DIR``: remove temporary files that a killed run left there
  (``dmrilib._atomic.remove_stale_temp``; never one that a live process on
  this host is writing);
- ``--stage-dir DIR --stage-hash HASH``: a resumable stage (training, the
  segmentation U-Net) resumes from DIR only when DIR was made with the same
  settings, recorded in ``DIR/.workflow-stage``; otherwise DIR is emptied
  first. DIR is the workflow's own result folder, so a re-run after editing
  the profile (or the cohort) retrains instead of resuming, or refusing,
  another configuration's checkpoint. A job that owns several such folders
  (a stacked train job, ``train.stack_folds``) repeats ``--stage-dir``.

Usage::

    python workflow/scripts/run_notebook.py notebooks/train.ipynb out.ipynb -p profile quick -p fold 0
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

#: Settings record of a resumable stage's folder (see ``reset_stage``).
STAGE_RECORD = ".workflow-stage"
#: Arguments for the kernel: its own log only at ERROR. At WARNING every job
#: printed "Kernel is running over TCP without encryption" (the kernel talks
#: to papermill over localhost with HMAC-signed messages; nothing to act on).
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]


def parse_value(text: str):
    """Type a ``-p`` value as papermill's command line does: bool, None, int, float, else str."""
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def reset_stage(folder: str | Path, stamp: str) -> bool:
    """Empty ``folder`` unless it was made with the settings ``stamp``; then record ``stamp``.

    A folder with results but no record (made before records existed) is
    emptied too: its settings are unknown. Returns True when it was emptied.
    """
    from dmrilib._atomic import write_text_atomic

    folder = Path(folder)
    record = folder / STAGE_RECORD
    emptied = False
    if folder.is_dir() and any(folder.iterdir()):
        try:
            previous = record.read_text().strip()
        except OSError:
            previous = None
        if previous != stamp:
            for entry in folder.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            emptied = True
    write_text_atomic(record, stamp + "\n")
    return emptied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebook")
    parser.add_argument("output")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--cwd", default=".")
    parser.add_argument("-k", "--kernel", default="python3")
    parser.add_argument("--clean-temp", action="append", default=[], metavar="DIR",
                        help="folder this job owns: remove temporary files a killed run left there")
    parser.add_argument("--stage-dir", action="append", default=[], metavar="DIR",
                        help="resumable stage folder (repeatable), emptied unless made with --stage-hash")
    parser.add_argument("--stage-hash", help="settings of the stage in --stage-dir")
    args = parser.parse_args(argv)
    if bool(args.stage_dir) != (args.stage_hash is not None):
        parser.error("--stage-dir and --stage-hash go together.")

    from dmrilib._atomic import remove_stale_temp

    for folder in args.clean_temp:
        for path in remove_stale_temp(folder, owned=True):
            print(f"removed {path} (left by a killed run)", file=sys.stderr)
    for folder in args.stage_dir:
        if reset_stage(folder, args.stage_hash):
            print(f"emptied {folder}: it held results of other settings", file=sys.stderr)

    import papermill

    papermill.execute_notebook(
        args.notebook, args.output,
        parameters={name: parse_value(value) for name, value in args.parameter},
        kernel_name=args.kernel, cwd=args.cwd, progress_bar=False, log_output=False,
        shutdown_kernel="immediate", extra_arguments=KERNEL_ARGUMENTS,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
