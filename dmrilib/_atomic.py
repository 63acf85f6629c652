"""Atomic file writing: results appear whole or not at all."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

__all__ = ["atomic_path", "atomic_dir", "remove_stale_temp", "write_csv_atomic", "write_json_atomic",
           "write_text_atomic"]

# Temporary names carry their writer as "<pid>@<host>" (".log.csv.4711@node1.k2j4h5x9.tmp.csv",
# ".prepared.tmp-4711@node1.k2j4h5x9"), so that a later run can tell the
# leftovers of a killed writer (pid gone on this host) from files that a live
# process is still writing: see remove_stale_temp.
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])[:32] or "host"
_TAG = r"(?:(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.)?"
# tempfile's random part: 8 characters of [a-z0-9_].
_TEMP_FILE = re.compile(r"^\.(?P<name>.+?)\." + _TAG + r"[a-z0-9_]{8}\.tmp(?:\..*)?$")
_TEMP_DIR = re.compile(r"^\.(?P<name>.+?)\.(?:tmp|old)-" + _TAG + r"[a-z0-9_]{8}$")


def _owner() -> str:
    return f"{os.getpid()}@{_HOST}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file lives in the same folder so the final ``os.replace`` is
    atomic. If the block raises, the temporary file is removed and ``path`` is
    left untouched, so a failed job never leaves a partial output behind.

    Parameters
    ----------
    path : path-like
        Final destination.
    suffix : str, optional
        Suffix for the temporary name (default: the destination's own suffixes,
        so that libraries which infer the format from the name, such as
        nibabel's ``.nii.gz``, still work).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner()}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; results are ordinary files (0666 & ~umask).
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_dir(path: str | os.PathLike, kind: str = "tmp") -> Path:
    """Create an empty temporary folder beside ``path`` (to fill, then rename onto ``path``).

    Named ``.<name>.<kind>-<pid>@<host>.<random>`` so that
    :func:`remove_stale_temp` recognises it, and made with the permissions of
    an ordinary folder (``0777 & ~umask``), not ``mkdtemp``'s 0700, because it
    becomes a result folder by renaming.

    Parameters
    ----------
    path : path-like
        The final folder.
    kind : {"tmp", "old"}
        ``tmp`` for a folder being built, ``old`` for one being deleted.
    """
    path = Path(path)
    if kind not in ("tmp", "old"):
        raise ValueError(f"atomic_dir: kind must be 'tmp' or 'old', got {kind!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{kind}-{_owner()}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    try:  # a zombie (killed, not yet reaped) writes nothing more
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_stale(name: str, is_dir: bool, owned: bool) -> bool:
    match = (_TEMP_DIR if is_dir else _TEMP_FILE).match(name)
    if match is None:
        return False
    if match["pid"] is not None and match["host"] == _HOST:
        return not _pid_alive(int(match["pid"]))
    # Written on another host (a cluster node) or by an older version: no
    # way to see whether its writer lives, so only the folder's owner may remove it.
    return owned


def remove_stale_temp(folder: str | os.PathLike, *, owned: bool = False, recursive: bool = True) -> list[Path]:
    """Remove the temporary files and folders that killed writers left under ``folder``.

    A write through :func:`atomic_path` or :func:`atomic_dir` that is killed
    (``kill -9``, a cancelled cluster job) leaves its temporary name behind.
    Call this when a job starts again. A temporary entry of a live process on
    this host is never removed.

    Parameters
    ----------
    folder : path-like
        Where to look (a missing folder is fine).
    owned : bool
        True when the caller owns ``folder`` (e.g. the workflow job that
        writes it, while no other job can): entries whose writer cannot be
        checked (another host, an older name without the writer) are removed
        too. False removes only entries whose writer is known to be dead.
    recursive : bool
        Look into subfolders.

    Returns
    -------
    list of Path
        What was removed.
    """
    removed: list[Path] = []
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            continue
        path = Path(entry.path)
        if _is_stale(entry.name, is_dir, owned):
            try:
                shutil.rmtree(path) if is_dir else path.unlink()
            except FileNotFoundError:  # its writer finished or another cleaner got there first
                continue
            removed.append(path)
        elif is_dir and recursive and not (_TEMP_DIR.match(entry.name)):
            removed += remove_stale_temp(path, owned=owned, recursive=True)
    return removed


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv_atomic(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str]) -> Path:
    """Write ``rows`` (dicts) as a CSV file with a header, atomically (``\\n`` line ends)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buf.getvalue())
