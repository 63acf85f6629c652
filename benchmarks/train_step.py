"""Time one training step of the DAE (lsd512) and RecDiscNet: the plain reference and the faster step candidates.

For each model it measures, at the chosen size (batch 4), one row per mode
of ``--modes`` (default ``reference,fast``):

* ``reference``: fp32 eager, default memory format, plain (unfused) Adam,
  noise drawn on the CPU and copied to the device every step;
* ``fast``: what ``dmrilib.train`` does with the profile's fast settings:
  data resident on the device, JOOD / latent noise drawn on the device, bf16
  autocast and ``channels_last_3d`` on CUDA (fp32 on CPU), fused Adam on
  CUDA (``dmrilib.train._setup``);
* ``stack-K`` (DAE only; ``stack`` means one row per ``--stack K``): the fast
  settings with ``K`` DAE networks trained at once as
  :class:`dmrilib.stack.StackedModels` (one vmapped forward/backward over
  ``K`` batches of 4, one Adam over the stacked weights), as
  ``train.stack_folds: K`` trains ``K`` folds of one configuration.

A fast or stack mode takes options after ``+``: ``+cudnn``
(``torch.backends.cudnn.benchmark``: cuDNN times its algorithms for the
fixed shapes; CUDA only, recorded but without effect on a CPU), ``+compile``
(``dmrilib.train.compiled``: ``torch.compile`` with fixed shapes, mode
``--compile-mode``) or ``+compile=MODE`` (``default``, ``reduce-overhead``
= CUDA graphs, ``max-autotune``, ``max-autotune-no-cudagraphs``);
``fast-compile`` is ``fast+compile``. ``--compile`` and ``--cudnn-benchmark``
add those options to every fast and stack mode. Without a model prefix a
mode runs for each model of ``--model`` (stack modes for the DAE only), the
rows model by model; with prefixes (``dae:fast``, ``recdisc:reference``) the
rows run exactly in the order given. Every row records its settings
(precision, channels_last, fused Adam, compile, compile_mode,
cudnn_benchmark, stack) in the JSON.

Smoke and quick sizes take grid, widths and JOOD radii from ``configs/<size>.yaml``
(RecDiscNet steps use the profile's ``recdisc_crop`` window when it sets one);
``paper`` is 64x80x64 with the paper's widths. ``--fidelity`` picks the
architectures (``model.dae_architecture`` / ``recdisc_architecture`` and, at
paper size, ``disc_depth``; :mod:`dmrilib.fidelity` rows 13-14): the authors'
code (default), the paper reading, or both in turn.

Each row prints step time, samples/s, peak memory, FLOP per step
(``torch.utils.flop_counter.FlopCounterMode``, counted once per model in
the first eager single-network row: the reference when it runs), achieved
TFLOP/s, the fraction of the device's measured matmul peak (bf16 on CUDA,
fp32 on CPU; measured once per run), the speed-up in samples/s over the
same run's reference, and at paper size an estimate of device-hours for the
paper's full grid (12 configurations per model x 7 folds x the fidelity's
epochs: 250 code, 500 paper; RecDiscNet validates on 4 (code) or 1 (paper)
copies per subject). A ``stack-K`` step trains ``K`` batches: samples/s is
``K * 4 / step``, its FLOP ``K`` times one network's, and the grid's 7
folds of each configuration train in ``ceil(7 / K)`` stacks. A summary
table ends the output.

For one device call of bounded length: ``--min-time`` repeats the timed
steps until that many seconds have passed, ``--time-limit`` bounds the whole
run (rows that would start after it are recorded as skipped),
``--row-limit`` bounds each row (a row past it, e.g. a long compilation, is
recorded as timed out and the next one starts), ``--keep-going`` records a
failing row (out of memory, a compiler error) instead of stopping (the run
then exits with status 3), and ``--json`` is rewritten after every row.
``tools/gpu_step.sh`` is such a call; ``--summarize FILE`` prints the table
of a JSON written earlier.

``--flops-only`` counts parameters and forward+backward FLOP per sample on the
meta device (no memory, no timing; any size on a CPU) and the FLOP of the
whole paper grid; with ``--tflops`` (an achieved throughput, e.g. one measured
here on a GPU) it converts them into device-hours.

Usage::

    python benchmarks/train_step.py --size smoke|quick|paper [--model dae|recdisc|both]
        [--steps 5] [--compile] [--fidelity code|paper|both] [--json out.json]
    python benchmarks/train_step.py --size paper --model dae --modes reference,fast,fast+cudnn,stack --stack 4 7
    python benchmarks/train_step.py --size paper --modes dae:reference,recdisc:reference,recdisc:fast+cudnn
    python benchmarks/train_step.py --flops-only --size paper --fidelity both [--tflops 220]

On a CPU keep ``--size paper`` to ``--steps 1`` (a RecDiscNet step takes minutes there).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import json
import math
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from dmrilib import fidelity as fid
from dmrilib.config import load_profile
from dmrilib.crossval import COMPILE_MODES
from dmrilib.models import ModelConfig
from dmrilib.noise import JoodConfig, add_jood
from dmrilib.train import TrainConfig, _build, _Step, compiled, resolve_device

CHANNELS = 64
BATCH = 4
MODELS = ("dae", "recdisc")
VARIANTS = {"dae": "lsd512-sigmoid", "recdisc": "mix-mix-half"}
#: Paper cohort per fold: 24 training + 4 validation healthy subjects.
PAPER_TRAIN, PAPER_VAL, PAPER_FOLDS, PAPER_CONFIGS = 24, 4, 7, 12


@dataclasses.dataclass(frozen=True)
class Mode:
    """One row's step: ``kind`` reference / fast / stack and the fast path's options."""

    kind: str
    stack: int = 1
    compile: bool = False
    compile_mode: str = "default"
    cudnn_benchmark: bool = False

    @property
    def name(self) -> str:
        name = f"stack-{self.stack}" if self.kind == "stack" else self.kind
        if self.cudnn_benchmark:
            name += "+cudnn"
        if self.compile:
            name += "+compile" + ("" if self.compile_mode == "default" else f"={self.compile_mode}")
        return name


def parse_modes(text: str, *, stacks: tuple[int, ...] = (), compile_: bool = False,
                compile_mode: str = "default", cudnn_benchmark: bool = False) -> list[tuple[str | None, Mode]]:
    """``--modes`` as (model or None for every model, Mode) pairs, or a ValueError saying what is wrong.

    ``stack`` expands into ``stack-K`` for each K of ``stacks``; ``compile_``,
    ``compile_mode`` and ``cudnn_benchmark`` are the defaults of every fast
    and stack mode (``--compile``, ``--compile-mode``, ``--cudnn-benchmark``).
    """
    out: list[tuple[str | None, Mode]] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        model, _, spec = entry.rpartition(":")
        if model and model not in MODELS:
            raise ValueError(f"--modes {entry!r}: unknown model {model!r}; use one of {MODELS} (or no prefix).")
        base, *options = spec.split("+")
        if base == "fast-compile":
            base, options = "fast", ["compile", *options]
        if base == "reference":
            if options:
                raise ValueError(f"--modes {entry!r}: the reference is the plain fp32 path and takes no options; "
                                 "put +cudnn / +compile on fast or stack modes.")
            out.append((model or None, Mode("reference")))
            continue
        if base == "stack":
            if not stacks:
                raise ValueError(f"--modes {entry!r}: give the stack sizes with --stack K [K ...] "
                                 "(or name them: stack-4).")
            ks = list(stacks)
        elif base.startswith("stack-") and base[6:].isdigit() and int(base[6:]) >= 1:
            ks = [int(base[6:])]
        elif base == "fast":
            ks = []
        else:
            raise ValueError(f"--modes {entry!r}: unknown mode {base!r}; use reference, fast, fast-compile, "
                             "stack or stack-K, with options +cudnn, +compile, +compile=MODE.")
        if ks and model == "recdisc":
            raise ValueError(f"--modes {entry!r}: only the DAE stacks (dmrilib.stack).")
        cudnn, comp, cmode = cudnn_benchmark, compile_, compile_mode
        for option in options:
            if option == "cudnn":
                cudnn = True
            elif option == "compile":
                comp = True
            elif option.startswith("compile=") and option[8:] in COMPILE_MODES:
                comp, cmode = True, option[8:]
            else:
                raise ValueError(f"--modes {entry!r}: unknown option {option!r}; use +cudnn, +compile or "
                                 f"+compile=MODE with MODE one of {list(COMPILE_MODES)}.")
        for k in ks or [1]:
            out.append((model or None, Mode("stack" if ks else "fast", k, comp, cmode, cudnn)))
    if not out:
        raise ValueError("--modes is empty; e.g. --modes reference,fast")
    return out


def _plan(modes: list[tuple[str | None, Mode]], models: tuple[str, ...],
          fidelities: tuple[str, ...]) -> list[tuple[str, str, Mode]]:
    """(fidelity, model, mode) rows: model by model, or as given once any mode names its model."""
    for model, mode in modes:
        if model is not None and model not in models:
            raise ValueError(f"--modes names {model} but --model selects {models}; use --model both.")
    if all(m is None for m, _ in modes):
        pairs = [(model, mode) for model in models for _, mode in modes]
    else:
        pairs = [(model, mode) for named, mode in modes for model in ((named,) if named else models)]
    rows = [(f, model, mode) for f in fidelities for model, mode in pairs if model == "dae" or mode.kind != "stack"]
    if not rows:
        raise ValueError("no rows to run: stack modes are for the DAE only (--model dae or both).")
    return rows


def _sizes(size: str, fidelity: str = "code") -> tuple[tuple[int, int, int], ModelConfig, tuple[float, float],
                                                      tuple[int, int, int] | None]:
    """Grid, model config, JOOD radii and RecDiscNet training window of a profile.

    ``paper`` size: the paper's widths with every model key of ``fidelity``.
    Smoke/quick: the profile's sizes (its own ``disc_depth``) with the
    architectures of ``fidelity``.
    """
    if size == "paper":
        return (64, 80, 64), ModelConfig(fidelity=fidelity), (5.0, 11.0), None
    profile = load_profile(size)
    model = dataclasses.replace(profile.model, fidelity=fidelity, dae_architecture=fidelity,
                                recdisc_architecture=fidelity)
    return tuple(profile.prepare.grid), model, profile.train.jood_radius, profile.train.recdisc_crop


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _matmul_peak(device: torch.device) -> tuple[float, str]:
    """Measured dense matmul throughput in TFLOP/s (bf16 on CUDA, fp32 on CPU)."""
    n, dtype, label = (8192, torch.bfloat16, "bf16") if device.type == "cuda" else (1024, torch.float32, "fp32")
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps = 50 if device.type == "cuda" else 5
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12, label


def _train_config(mode: Mode, device: torch.device, radius: tuple[float, float], fidelity: str) -> TrainConfig:
    fast, cuda = mode.kind != "reference", device.type == "cuda"
    return TrainConfig(fidelity=fidelity, epochs=1, batch_size=BATCH, lr=1e-4,
                       precision="bf16" if fast and cuda else "fp32", channels_last=fast and cuda,
                       compile=mode.compile, compile_mode=mode.compile_mode, cudnn_benchmark=mode.cudnn_benchmark,
                       stack_folds=mode.stack, device=device.type, jood_radius=radius)


def _adam(params: Any, cfg: TrainConfig, device: torch.device, fast: bool) -> torch.optim.Optimizer:
    # the fast path's fused Adam is dmrilib.train._setup's; the reference keeps torch's default
    return torch.optim.Adam(params, lr=cfg.lr, fused=True if fast and device.type == "cuda" else None)


def _single(model: str, mode: Mode, cfg: TrainConfig, grid: tuple[int, ...], model_config: ModelConfig,
            radius: tuple[float, float], device: torch.device) -> tuple[Callable[[], Any], int, bool]:
    """One network's training step (a closure), its parameter count, and whether Adam is fused."""
    fast = mode.kind == "fast"
    variant = VARIANTS[model]
    net = _build(model, variant, model_config, CHANNELS, grid, seed=0)
    net.to(device=device, memory_format=torch.channels_last_3d if cfg.channels_last else torch.contiguous_format)
    net.train()
    opt = _adam(net.parameters(), cfg, device, fast)
    jood = JoodConfig.from_variant(variant, radius=radius) if model == "recdisc" else None
    loss_fn = compiled(_Step(model, net, cfg, jood, device).loss, cfg)

    data_dev = torch.rand(BATCH, CHANNELS, *grid, device=device if fast else "cpu")
    brain = torch.zeros(BATCH, *grid, dtype=torch.bool, device=data_dev.device)
    brain[:, grid[0] // 8: -grid[0] // 8, grid[1] // 8: -grid[1] // 8, grid[2] // 8: -grid[2] // 8] = True
    gen = torch.Generator(device=data_dev.device).manual_seed(0)

    def one_step() -> torch.Tensor:
        clean = data_dev
        if model == "dae":
            clean = clean.to(device, non_blocking=True)
            eps = torch.randn(BATCH, net.lsd, generator=gen, device=data_dev.device).to(device)
            loss = loss_fn(clean, latent_noise=eps)
        else:
            disturbed, mask = add_jood(clean, brain, jood, gen)  # CPU-side in the reference
            loss = loss_fn(clean.to(device), disturbed=disturbed.to(device), patch_mask=mask.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return one_step, sum(p.numel() for p in net.parameters()), fast and device.type == "cuda"


def _stacked(mode: Mode, cfg: TrainConfig, grid: tuple[int, ...], model_config: ModelConfig,
             device: torch.device) -> tuple[Callable[[], Any], int, bool]:
    """``K`` DAE networks' stacked training step (as :func:`dmrilib.stack.train_stacked` takes it)."""
    from dmrilib.stack import StackedModels, stacked_dae_loss

    net = _build("dae", VARIANTS["dae"], model_config, CHANNELS, grid, seed=0)
    net.to(device=device, memory_format=torch.channels_last_3d if cfg.channels_last else torch.contiguous_format)
    lsd, parameters = int(net.lsd), sum(p.numel() for p in net.parameters())
    # equal weights in every member change no timing; copies are quicker to make than K initialisations
    stack = StackedModels([net] + [copy.deepcopy(net) for _ in range(mode.stack - 1)]).to(device)
    del net
    stack.train()
    opt = _adam(stack.parameters(), cfg, device, fast=True)
    loss_fn = compiled(stacked_dae_loss(stack, cfg, device), cfg)
    clean = torch.rand(mode.stack, BATCH, CHANNELS, *grid, device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def one_step() -> torch.Tensor:
        eps = torch.randn(mode.stack, BATCH, lsd, generator=gen, device=device)
        losses = loss_fn(clean, eps)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()
        return losses.detach()

    return one_step, parameters, device.type == "cuda"


def _count_flops(one_step: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        one_step()
    return int(counter.get_total_flops())


def _time(one_step: Callable[[], Any], device: torch.device, steps: int, min_time: float) -> tuple[float, int]:
    """Seconds per step over at least ``steps`` steps and ``min_time`` seconds, and the steps timed."""
    _sync(device)
    t0 = time.perf_counter()
    n = 0
    # the host runs ahead of the device by at most its launch queue: the loop ends near min_time
    while n < steps or time.perf_counter() - t0 < min_time:
        one_step()
        n += 1
    _sync(device)
    return (time.perf_counter() - t0) / n, n


def _bench(model: str, mode: Mode, size: str, device: torch.device, steps: int, fidelity: str = "code", *,
           count_flops: bool = False, min_time: float = 0.0) -> dict:
    """Build, warm up (compile) and time one row; FLOP of one network's step when ``count_flops``."""
    grid, model_config, radius, crop = _sizes(size, fidelity)
    if model == "recdisc" and crop is not None:
        grid = crop  # the profile trains RecDiscNet on windows of this size
    cfg = _train_config(mode, device, radius, fidelity)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = mode.cudnn_benchmark  # global: set for every row
    if mode.kind == "stack":
        one_step, parameters, fused = _stacked(mode, cfg, grid, model_config, device)
    else:
        one_step, parameters, fused = _single(model, mode, cfg, grid, model_config, radius, device)
    # compilation, CUDA graph recording (second call) and cuDNN's search happen in the warm-up
    warmup = 3 if mode.compile else 2 if mode.cudnn_benchmark and device.type == "cuda" else 1
    for _ in range(warmup):
        one_step()
    _sync(device)
    flops = _count_flops(one_step) if count_flops else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, timed = _time(one_step, device, steps, min_time)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"model": model, "variant": VARIANTS[model], "mode": mode.name, "status": "ok", "size": size,
            "fidelity": fidelity, "grid": list(grid), "precision": cfg.precision, "channels_last": cfg.channels_last,
            "fused_adam": fused, "compile": cfg.compile, "compile_mode": cfg.compile_mode if cfg.compile else None,
            "cudnn_benchmark": cfg.cudnn_benchmark, "stack": mode.stack, "warmup_steps": warmup,
            "timed_steps": timed, "step_s": seconds, "samples_per_s": mode.stack * BATCH / seconds,
            "peak_mem_gib": peak / 2**30, "flop_counted": flops, "parameters": parameters}


def _paper_grid(model: str, fidelity: str) -> tuple[int, float]:
    """Epochs and training-step equivalents per epoch of one paper-grid run (batch ``BATCH``).

    Training: 24 subjects (RecDiscNet: 4 disturbed copies each) forward and
    backward; validation: 4 subjects (RecDiscNet: ``val_copies`` copies)
    forward only, ~1/3 of a step.
    """
    train = fid.defaults("train", fidelity)
    copies = 4 if model == "recdisc" else 1
    val_copies = int(train["val_copies"]) if model == "recdisc" else 1
    steps = -(-PAPER_TRAIN * copies // BATCH) + PAPER_VAL * val_copies / BATCH / 3
    return int(train["epochs"]), steps


def _paper_hours(model: str, step_s: float, fidelity: str = "code", stack: int = 1) -> float:
    """Device-hours of the paper grid at ``step_s`` per (stacked) step; stacks of ``stack`` folds per configuration."""
    epochs, steps = _paper_grid(model, fidelity)
    return steps * step_s * epochs * math.ceil(PAPER_FOLDS / stack) * PAPER_CONFIGS / 3600


def _derive(rows: list[dict], peak: float, size: str) -> None:
    """Fill FLOP, TFLOP/s, fraction of peak, speed-up and paper-grid hours from the rows measured so far."""
    flops: dict[tuple[str, str], int] = {}
    refs: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (r["model"], r["fidelity"])
        if r.get("flop_counted") is not None:
            flops.setdefault(key, r["flop_counted"])
        if r["status"] == "ok" and r["mode"] == "reference":
            refs.setdefault(key, r)
    for r in rows:
        if r["status"] != "ok":
            continue
        key = (r["model"], r["fidelity"])
        single = flops.get(key)
        r["flop_per_step"] = single * r["stack"] if single is not None else None
        r["tflops"] = r["flop_per_step"] / r["step_s"] / 1e12 if single is not None else None
        r["fraction_of_peak"] = r["tflops"] / peak if single is not None else None
        r["speedup_vs_reference"] = r["samples_per_s"] / refs[key]["samples_per_s"] if key in refs else None
        r["paper_grid_device_hours"] = (_paper_hours(r["model"], r["step_s"], r["fidelity"], r["stack"])
                                        if size == "paper" else None)


def _fmt(value: float | None, spec: str, scale: float = 1.0, missing: str = "-") -> str:
    return missing if value is None else format(value * scale, spec)


def _row_line(r: dict) -> str:
    head = f"{r['model']:8s} {r['fidelity']:5s} {r['mode']:30s} {r['size']:6s}"
    if r["status"] != "ok":
        return f"{head} {r['status']}"
    line = (f"{head} step {r['step_s']*1e3:9.1f} ms  {r['samples_per_s']:7.2f} samples/s  "
            f"peak {r['peak_mem_gib']:6.2f} GiB  {_fmt(r['flop_per_step'], '8.3f', 1e-12, '       ?')} TFLOP/step  "
            f"{_fmt(r['tflops'], '7.3f', missing='      ?')} TFLOP/s "
            f"({_fmt(r['fraction_of_peak'], '5.1f', 100, '    ?')}% of peak)  params {r['parameters']/1e6:7.2f} M")
    if r.get("speedup_vs_reference") is not None and r["mode"] != "reference":
        line += f"  x{r['speedup_vs_reference']:.2f} vs reference"
    if r.get("paper_grid_device_hours") is not None:
        line += f"  full grid ~{r['paper_grid_device_hours']:.1f} device-h"
    return line


def summary_table(record: dict) -> str:
    """A markdown table of a run's rows (the JSON that ``--json`` writes)."""
    lines = [f"device: {record['device']}; {record['peak_kind']} matmul peak {record['matmul_peak_tflops']:.4g} "
             f"TFLOP/s; torch {record.get('torch', '?')}",
             "", "| model | fidelity | mode | step ms | samples/s | TFLOP/s | of peak | vs reference | peak GiB "
             "| paper grid device-h | status |", "|" + "---|" * 11]
    for r in record["results"]:
        ok = r["status"] == "ok"
        share, speedup = r.get("fraction_of_peak"), r.get("speedup_vs_reference")
        cells = [r["model"], r["fidelity"], r["mode"],
                 _fmt(r.get("step_s") if ok else None, ".1f", 1e3), _fmt(r.get("samples_per_s"), ".4g"),
                 _fmt(r.get("tflops"), ".4g"), _fmt(share, ".1f", 100) + ("%" if share is not None else ""),
                 _fmt(speedup, ".2f") + ("x" if speedup is not None else ""),
                 _fmt(r.get("peak_mem_gib"), ".1f"), _fmt(r.get("paper_grid_device_hours"), ".2f"), r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class _RowTimeout(BaseException):
    """A row ran past its time (``--row-limit`` or what ``--time-limit`` left).

    A BaseException, so that the compiler's ``except Exception`` handlers let it through.
    """


@contextlib.contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    """Raise :class:`_RowTimeout` in the main thread after ``seconds`` (None: no limit)."""
    if seconds is None or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise _RowTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _timed_out(exc: BaseException | None) -> bool:
    """Whether ``exc`` wraps a :class:`_RowTimeout` (the compiler re-raises errors as its own)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, _RowTimeout):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _free(device: torch.device) -> None:
    """Drop compiled graphs and cached memory between rows (clean peaks, no recompile limits)."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _run_row(model: str, mode: Mode, fidelity: str, args: argparse.Namespace, device: torch.device,
             count_flops: bool, deadline: float | None) -> dict:
    """One row within its time limits; timed-out, skipped or (with ``--keep-going``) failed rows are recorded."""
    limits = [x for x in (args.row_limit, None if deadline is None else deadline - time.perf_counter())
              if x is not None]
    limit = min(limits) if limits else None
    t0 = time.perf_counter()
    status = None
    if limit is not None and limit <= 0:
        status = "skipped: time limit reached"
    else:
        try:
            with _alarm(limit):
                row = _bench(model, mode, args.size, device, args.steps, fidelity, count_flops=count_flops,
                             min_time=args.min_time)
        except _RowTimeout:
            status = f"timed out after {time.perf_counter() - t0:.0f} s"
        except Exception as exc:  # noqa: BLE001 - recorded, so that one call measures the other rows
            if _timed_out(exc):
                status = f"timed out after {time.perf_counter() - t0:.0f} s"
            elif not args.keep_going:
                raise
            else:
                status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        finally:
            _free(device)
    if status is not None:
        row = {"model": model, "variant": VARIANTS[model], "mode": mode.name, "status": status, "size": args.size,
               "fidelity": fidelity, "stack": mode.stack, "compile": mode.compile,
               "compile_mode": mode.compile_mode if mode.compile else None, "cudnn_benchmark": mode.cudnn_benchmark}
    row["row_s"] = time.perf_counter() - t0
    return row


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("smoke", "quick", "paper"), default="smoke")
    parser.add_argument("--model", choices=("dae", "recdisc", "both"), default="both")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (at least)")
    parser.add_argument("--modes", default=None,
                        help="comma-separated rows: reference, fast, fast-compile, stack, stack-K, each fast/stack "
                             "one with options +cudnn, +compile, +compile=MODE, optionally model-prefixed "
                             "(dae:stack-4); default reference,fast (and stack with --stack)")
    parser.add_argument("--stack", type=int, nargs="+", default=(), metavar="K",
                        help="DAE networks per stacked step for the mode 'stack' (one row each)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every fast and stack mode")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                        help="torch.compile mode of --compile and +compile")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="torch.backends.cudnn.benchmark for every fast and stack mode (CUDA only)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the results to this JSON file (after every row)")
    parser.add_argument("--min-time", type=float, default=0.0, help="time each row for at least this many seconds")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds for the whole run (peak included); later rows are skipped")
    parser.add_argument("--row-limit", type=float, default=None, help="seconds per row, warm-up and compile included")
    parser.add_argument("--keep-going", action="store_true", help="record a failing row and run the next one")
    parser.add_argument("--summarize", default=None, metavar="JSON",
                        help="print the summary table of a JSON written by --json, and nothing else")
    parser.add_argument("--flops-only", action="store_true",
                        help="count parameters and FLOP per sample on the meta device (no timing; any size on a CPU)")
    parser.add_argument("--fidelity", choices=("code", "paper", "both"), default=None,
                        help="architectures: the authors' code, the paper reading, or both "
                             "(default: code; both with --flops-only)")
    parser.add_argument("--tflops", type=float, default=None,
                        help="with --flops-only: achieved TFLOP/s that turns FLOP into device-hours")
    return parser


def _flops_only(size: str, which: str, fidelities: tuple[str, ...], tflops: float | None) -> list[dict]:
    """Parameters and forward+backward FLOP per sample, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from dmrilib.models import build_model, dae_loss, recdisc_loss

    rows = []
    for fidelity in fidelities:
        grid, model_config, _, _ = _sizes(size, fidelity)
        for model in (MODELS if which == "both" else (which,)):
            variants = ("lsd16-sigmoid", "lsd512-sigmoid") if model == "dae" else (VARIANTS["recdisc"],)
            for variant in variants:
                with torch.device("meta"):
                    net = build_model(model, variant, model_config, CHANNELS, grid=grid)
                    x = torch.rand(1, CHANNELS, *grid)
                    counter = FlopCounterMode(display=False)
                    with counter:
                        out = net(x)
                        loss = (dae_loss(out, x) if model == "dae"
                                else recdisc_loss(out, x, torch.zeros(1, *grid, dtype=torch.bool)))
                        loss.backward()
                epochs, steps = _paper_grid(model, fidelity)
                per_sample = counter.get_total_flops()
                grid_flop = per_sample * BATCH * steps * epochs * PAPER_FOLDS * PAPER_CONFIGS
                row = {"model": model, "variant": variant, "size": size, "fidelity": fidelity, "grid": list(grid),
                       "parameters": sum(p.numel() for p in net.parameters()), "flop_per_sample": per_sample,
                       "paper_grid_epochs": epochs, "paper_grid_flop": grid_flop,
                       "paper_grid_device_hours": grid_flop / (tflops * 1e12) / 3600 if tflops else None}
                rows.append(row)
                print(f"{model:8s} {variant:15s} {size:6s} {fidelity:5s} params {row['parameters']:>11,d}  "
                      f"{per_sample/1e12:7.3f} TFLOP per sample (forward + backward)  paper grid "
                      f"({epochs} epochs) {grid_flop/1e18:7.2f} EFLOP"
                      + (f" = {row['paper_grid_device_hours']:.1f} device-h at {tflops:g} TFLOP/s" if tflops else ""))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    start = time.perf_counter()
    parser = _parser()
    args = parser.parse_args(argv)
    if args.summarize:
        record = json.loads(Path(args.summarize).read_text())
        print(summary_table(record))
        return record["results"]
    chosen = args.fidelity or ("both" if args.flops_only else "code")
    fidelities = ("code", "paper") if chosen == "both" else (chosen,)
    if args.flops_only:
        return _flops_only(args.size, args.model, fidelities, args.tflops)
    if args.steps < 1 or any(k < 1 for k in args.stack):
        parser.error("--steps and --stack sizes must be at least 1")
    try:
        modes = parse_modes(args.modes or ("reference,fast,stack" if args.stack else "reference,fast"),
                            stacks=tuple(args.stack), compile_=args.compile, compile_mode=args.compile_mode,
                            cudnn_benchmark=args.cudnn_benchmark)
        plan = _plan(modes, MODELS if args.model == "both" else (args.model,), fidelities)
    except ValueError as exc:
        parser.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    deadline = None if args.time_limit is None else start + args.time_limit
    peak, peak_kind = _matmul_peak(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; measured {peak_kind} matmul peak {peak:.2f} TFLOP/s; {len(plan)} rows", flush=True)
    record = {"device": name, "matmul_peak_tflops": peak, "peak_kind": peak_kind, "torch": torch.__version__,
              "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
              "argv": sys.argv[1:] if argv is None else list(argv), "results": []}
    results: list[dict] = record["results"]
    for fidelity, model, mode in plan:
        # one network's FLOP, counted in the first eager single-network row of each model
        counted = any(r.get("flop_counted") is not None for r in results
                      if (r["model"], r["fidelity"]) == (model, fidelity))
        try:
            row = _run_row(model, mode, fidelity, args, device,
                           count_flops=not counted and mode.kind != "stack" and not mode.compile, deadline=deadline)
        except KeyboardInterrupt:  # e.g. tools/gpu_step.sh's hard limit: keep what was measured
            print(f"{model} {mode.name}: interrupted; the rows before it are kept", flush=True)
            break
        row["device"] = name
        results.append(row)
        _derive(results, peak, args.size)
        print(_row_line(row), flush=True)
        if args.json:
            from dmrilib._atomic import write_json_atomic

            write_json_atomic(args.json, record)
    print()
    print(summary_table(record))
    return results


#: Exit status when a row failed (``--keep-going`` ran the others): the table was printed.
ROWS_FAILED = 3


def exit_status(results: list[dict]) -> int:
    """0, or :data:`ROWS_FAILED` when a row failed; timed-out and skipped rows are not failures."""
    return ROWS_FAILED if any(str(r.get("status", "")).startswith("failed") for r in results) else 0


if __name__ == "__main__":
    sys.exit(exit_status(main()))
