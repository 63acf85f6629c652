#!/usr/bin/env bash
# Idempotent environment setup for `make setup` (called by `make book` and `make test`).
# - .venv with the pinned Python packages (constraints.txt), dmrilib installed editable;
# - with --browser (make test): Debian's chromium for the headless book tests (apt-get as root);
# - with --slurm (make test): Debian's SLURM daemons, clients and munge for the live one-node
#   cluster of tests/test_workflow_slurm.py (apt-get as root; the test starts and stops them).
# A second run finds the stamp up to date and returns in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.setup-stamp
# torch: the CPU build by default. GPU users: see README ("Running on a GPU").
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
UV_VERSION=0.9.30
browser=0
slurm=0
for arg in "$@"; do
  case "$arg" in
    --browser) browser=1 ;;
    --slurm) slurm=1 ;;
    *) echo "setup: unknown option $arg (known: --browser, --slurm)" >&2; exit 2 ;;
  esac
done
want=$(cat pyproject.toml constraints.txt tools/setup.sh | sha256sum | cut -c1-16)-$TORCH_SPEC

need_python() {
  if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "setup: $PYTHON not found. Install Python 3.11 or newer (or run make PYTHON=/path/to/python3)." >&2
    exit 1
  fi
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: $("$PYTHON" --version) is too old; dmri-anomaly needs Python >= 3.11." >&2
    exit 1
  fi
}

apt_install() {
  # Debian packages: only when missing, only as root (say what to do otherwise).
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: Debian packages ${missing[*]} are needed (make test) but this is not root." >&2
    echo "       Run: sudo apt-get install -y ${missing[*]}   then run make again." >&2
    exit 1
  fi
  echo "setup: apt-get install ${missing[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  :  # Python environment up to date
else
  need_python
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  echo "setup: installing pinned Python packages into $VENV (first run: about a minute)"
  # torch through pip, which honours the machine's pip configuration (local
  # wheels, a CUDA index given in TORCH_SPEC); everything else through uv,
  # several times faster than pip, against the full pin list.
  # shellcheck disable=SC2086  # TORCH_SPEC may carry pip options
  "$VENV/bin/python" -m pip install -qq --disable-pip-version-check "uv==$UV_VERSION" $TORCH_SPEC
  torch_version=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))')
  constraints=$(mktemp)
  trap 'rm -f "$constraints"' EXIT
  # The installed torch is the pin, so uv keeps it (CPU or CUDA build alike).
  { grep -v '^torch==' constraints.txt; echo "torch==$torch_version"; } > "$constraints"
  # --compile-bytecode: uv writes no .pyc files by default, and where
  # PYTHONDONTWRITEBYTECODE is set every job would recompile matplotlib,
  # pandas etc. at import (seconds per process, 55 processes per quick book).
  VIRTUAL_ENV="$PWD/$VENV" "$VENV/bin/uv" pip install -q --compile-bytecode -c "$constraints" -e ".[dev]"
  "$VENV/bin/python" -m pip check
  # Kernels of this environment (workflow jobs, the book's pages) log at
  # ERROR: ipykernel's "Kernel is running over TCP without encryption"
  # warning was printed once per job and page (local kernels, loopback only).
  mkdir -p "$VENV/etc/ipython"
  echo 'c.IPKernelApp.log_level = "ERROR"' > "$VENV/etc/ipython/ipython_kernel_config.py"
  echo "$want" > "$STAMP"
fi

packages=()
[ "$browser" = 1 ] && packages+=(chromium)
# slurm-wlm's parts, without recommends. The system slurmctld/slurmd services
# find no /etc/slurm/slurm.conf and stay off; the test runs its own daemons.
[ "$slurm" = 1 ] && packages+=(slurmctld slurmd slurm-client munge)
if [ ${#packages[@]} -gt 0 ] && [ "${DMRI_SKIP_APT:-0}" != 1 ] && command -v dpkg >/dev/null 2>&1; then
  apt_install "${packages[@]}"
fi
