"""Run one workflow notebook with papermill and stop its kernel at once when it ends.

Same as ``papermill NOTEBOOK OUTPUT -p NAME VALUE ...`` (parameters typed
the way papermill's ``-p`` types them), except that the kernel is stopped
immediately after the last cell instead of being asked to shut down: a
kernel that has used torch takes ~3 s to exit gracefully on the 2-core
machines, ~70 s over the 24 training jobs of the quick book. Every result
is written (atomically) by the cells themselves, so nothing is lost.

Usage::

    python workflow/scripts/run_notebook.py notebooks/train.ipynb out.ipynb -p profile quick -p fold 0
"""
from __future__ import annotations

import argparse
import sys


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebook")
    parser.add_argument("output")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--cwd", default=".")
    parser.add_argument("-k", "--kernel", default="python3")
    args = parser.parse_args(argv)

    import papermill

    papermill.execute_notebook(
        args.notebook, args.output,
        parameters={name: parse_value(value) for name, value in args.parameter},
        kernel_name=args.kernel, cwd=args.cwd, progress_bar=False, log_output=False,
        shutdown_kernel="immediate",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
