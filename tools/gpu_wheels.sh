#!/usr/bin/env bash
# Wheels for `make book` on the lent GPU machine (tools/gpu_book.sh runs it there).
#
# That machine has no network and no Snakemake, papermill, Jupyter Book,
# nibabel, nilearn, dipy or ANTsPy; it has torch (CUDA), numpy, scipy,
# pandas, matplotlib, scikit-learn/-image and more (its list is below). This
# script, run here, downloads the wheels of what it lacks: the project's
# runtime, `groundtruth` and `pipeline` dependencies (pyproject.toml) and
# their dependencies, resolved for the GPU machine's Python at the versions of
# constraints.txt (one version of each), less what that machine has. They
# travel to it with the working tree, whose size is capped (64 MiB with the
# repository), so they go as one xz tarball of uncompressed wheels (112 MB of
# wheels make ~50 MB) and the script fails when tarball plus repository exceed
# the cap. See benchmarks/GPU_BOOK.md.
#
#   tools/gpu_wheels.sh                       # .whl/ for the GPU machine (Python 3.12.3)
#   tools/gpu_wheels.sh --python-version 3.11.7 --dest /tmp/whl311   # a CPU rehearsal
#
# Options: --python-version X.Y.Z (3.12.3, the GPU machine's: dependencies may
# need a patch release), --dest DIR (.whl), --margin-mib N (2:
# room left under the cap), --carry NAME (also carry NAME, which the GPU
# machine has in another version; repeatable).
# Writes DEST/wheels.tar.xz, DEST/carried.txt (name==version of each wheel),
# DEST/present.txt (name==version pinned here of each dependency taken from
# the GPU machine: what a rehearsal environment installs) and DEST/sizes.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

PYVER=3.12.3
DEST=.whl
MARGIN_MIB=2
CARRY=()
#: What the device copy may hold in all: the repository that travels plus DEST.
LIMIT_MIB=64
#: The GPU machine's Python packages (the device tool's KINDS.md,
#: nvidia-h200, read on 2026-11-17). A dependency named here is not carried.
GPU_PRESENT="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec
patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"
#: Declared dependencies that the book never imports, left behind for size
#: (29 MB of wheels): PuLP only serves Snakemake's ILP scheduler (without it
#: Snakemake schedules greedily: the same jobs, perhaps in another order);
#: ipykernel imports debugpy and IPython imports jedi (with parso) only if
#: they are installed (debugger, tab completion).
SKIP="pulp debugpy jedi parso"
#: manylinux tags the GPU machine's pip accepts (glibc 2.39; x86-64).
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64
           manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64)

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --python-version) PYVER=$2; shift 2 ;;
      --dest) DEST=$2; shift 2 ;;
      --margin-mib) MARGIN_MIB=$2; shift 2 ;;
      --carry) CARRY+=("$2"); shift 2 ;;
      -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
      *) echo "gpu_wheels: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
  done
}

find_uv() {
  # uv resolves for another Python and platform, sdists included (pip cannot).
  if [ -x .venv/bin/uv ]; then echo .venv/bin/uv
  elif command -v uv >/dev/null 2>&1; then command -v uv
  else echo "gpu_wheels: uv not found; run \`make setup\` first (it installs uv into .venv)." >&2; exit 1
  fi
}

requirements() {
  # The project's own requirements: runtime, groundtruth and pipeline, not torch (the GPU machine's CUDA build).
  python3 - <<'EOF'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
for req in project["dependencies"] + extras["groundtruth"] + extras["pipeline"]:
    name = re.split(r"[ <>=!~;\[]", req, maxsplit=1)[0].lower()
    if name not in ("torch", "dmrilib"):
        print(req)
EOF
}

resolve_closure() {
  # name==version of every package the requirements need on Python $PYVER, at constraints.txt's pins.
  local work=$1 uv
  uv=$(find_uv)
  requirements > "$work/requirements.txt"
  grep -v -i '^torch==' constraints.txt > "$work/constraints.txt"
  UV_PYTHON_DOWNLOADS=never "$uv" pip compile --quiet --no-header --no-annotate \
    --python-version "$PYVER" --python-platform x86_64-manylinux_2_28 \
    -c "$work/constraints.txt" "$work/requirements.txt" -o "$work/closure.txt"
}

split_closure() {
  # closure -> carried.txt (the GPU machine lacks them) and present.txt (it has them).
  local work=$1 keep_present skip
  keep_present=" $(echo $GPU_PRESENT) "
  for name in "${CARRY[@]}"; do keep_present=${keep_present/ $name / }; done
  skip=" $SKIP "
  : > "$work/carried.txt"; : > "$work/present.txt"
  while IFS= read -r line; do
    name=${line%%==*}
    if [[ $skip == *" $name "* ]]; then continue
    elif [[ $keep_present == *" $name "* ]]; then echo "$line" >> "$work/present.txt"
    else echo "$line" >> "$work/carried.txt"
    fi
  done < <(grep -E '^[A-Za-z0-9]' "$work/closure.txt")
}

download_wheels() {
  # Binary wheels for the GPU machine; a pure-Python sdist (connection-pool) is built into a wheel here.
  local work=$1 minor=${PYVER%.*} platform_args=() line built abi
  abi=cp${minor/./}
  for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
  mkdir -p "$work/wheels"
  while IFS= read -r line; do
    if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$minor" \
         --implementation cp --abi "$abi" --abi abi3 --abi none "${platform_args[@]}" \
         -d "$work/wheels" "$line" 2>/dev/null; then
      python3 -m pip wheel -q --no-deps -w "$work/built" "$line"
      built=$(ls "$work/built/"*.whl)
      case "$built" in *-py3-none-any.whl|*-py2.py3-none-any.whl) mv "$built" "$work/wheels/" ;;
        *) echo "gpu_wheels: $line has no wheel for $abi and builds a platform wheel here" >&2; exit 1 ;;
      esac
    fi
  done < "$work/carried.txt"
}

pack_wheels() {
  # One xz tarball of the wheels stored uncompressed: xz then compresses across files (112 MB -> ~50 MB).
  local work=$1 out=$2
  python3 - "$work/wheels" "$work/stored" <<'EOF'
import copy, sys, zipfile
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir()
for wheel in sorted(src.glob("*.whl")):
    # Same members, same bytes, so RECORD's hashes still hold; only the zip compression differs.
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(dst / wheel.name, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            stored = copy.copy(info)
            stored.compress_type = zipfile.ZIP_STORED
            zout.writestr(stored, zin.read(info))
EOF
  tar -C "$work/stored" --sort=name --mtime=@0 --owner=0 --group=0 -cf - . \
    | nice xz -9 -T2 > "$out.tmp"
  mv "$out.tmp" "$out"
}

repo_travel_bytes() {
  # What a device call sends besides DEST: tracked and untracked-not-ignored files (and an ignored shared/).
  local bytes
  bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null \
          | awk '{s += $1} END {print s + 0}')
  if [ -d shared ] && git check-ignore -q shared; then
    bytes=$((bytes + $(du -sb shared | cut -f1)))
  fi
  echo "$bytes"
}

ignore_dest() {
  # DEST inside the repository must be ignored (it travels by `carry`, and must never be committed).
  local rel
  case "$(realpath -m "$DEST")" in "$PWD"/*) ;; *) return 0 ;; esac
  rel=$(realpath -m --relative-to="$PWD" "$DEST")
  git check-ignore -q "$rel/x" && return 0
  echo "/$rel/" >> "$(git rev-parse --git-path info/exclude)"
  echo "gpu_wheels: added /$rel/ to $(git rev-parse --git-path info/exclude)"
}

check_budget() {
  # Sizes of what travels; fail when repository + DEST exceed the cap less the margin.
  local mib=$((1024 * 1024)) repo dest budget
  repo=$(repo_travel_bytes)
  dest=$(du -sb "$DEST" | cut -f1)
  budget=$((LIMIT_MIB * mib - MARGIN_MIB * mib - repo))
  {
    printf 'wheels: %s carried (%s in all as wheels), %s taken from the GPU machine, skipped: %s\n' \
      "$(wc -l < "$DEST/carried.txt")" "$(numfmt --to=iec-i --suffix=B "$1")" \
      "$(wc -l < "$DEST/present.txt")" "$SKIP"
    printf 'repository that travels: %s\n' "$(numfmt --to=iec-i --suffix=B "$repo")"
    printf '%s: %s (budget %s = %s MiB - repository - %s MiB margin)\n' "$DEST" \
      "$(numfmt --to=iec-i --suffix=B "$dest")" "$(numfmt --to=iec-i --suffix=B "$budget")" "$LIMIT_MIB" "$MARGIN_MIB"
  } | tee "$DEST/sizes.txt"
  if [ "$dest" -gt "$budget" ]; then
    echo "gpu_wheels: FAILED: $DEST is over its budget by $(numfmt --to=iec-i --suffix=B $((dest - budget)))" >&2
    exit 1
  fi
}

main() {
  parse_args "$@"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "gpu_wheels: resolving for Python $PYVER (pyproject.toml, constraints.txt)"
  resolve_closure "$work"
  split_closure "$work"
  echo "gpu_wheels: downloading $(wc -l < "$work/carried.txt") wheels"
  download_wheels "$work"
  rm -rf "$DEST"; mkdir -p "$DEST"
  ignore_dest
  cp "$work/carried.txt" "$work/present.txt" "$DEST/"
  echo "gpu_wheels: packing (xz -9, a minute or two)"
  pack_wheels "$work" "$DEST/wheels.tar.xz"
  check_budget "$(du -cb "$work/wheels/"*.whl | tail -1 | cut -f1)"
}

main "$@"
