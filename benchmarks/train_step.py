"""Time one training step of the DAE (lsd512) and RecDiscNet, fast path vs plain reference.

For each model it measures, at the chosen size (batch 4):

* ``fast``: what ``dmrilib.train`` does with the profile's fast settings: data
  resident on the device, JOOD noise drawn on the device, bf16 autocast and
  ``channels_last_3d`` on CUDA (fp32 on CPU), optional ``torch.compile``;
* ``reference``: fp32 eager, default memory format, noise drawn on the CPU
  and copied to the device every step.

Smoke and quick sizes take grid, widths and JOOD radii from ``configs/<size>.yaml``
(RecDiscNet steps use the profile's ``recdisc_crop`` window when it sets one);
``paper`` is 64x80x64 with the paper's widths. ``--fidelity`` picks the
architectures (``model.dae_architecture`` / ``recdisc_architecture`` and, at
paper size, ``disc_depth``; :mod:`dmrilib.fidelity` rows 13-14): the authors'
code (default), the paper reading, or both in turn.

It prints step time, samples/s, peak memory, FLOP per step
(``torch.utils.flop_counter.FlopCounterMode``), achieved TFLOP/s, the fraction
of the device's measured matmul peak (bf16 on CUDA, fp32 on CPU), and from the
fast step time an estimate of device-hours for the paper's full grid
(12 configurations per model x 7 folds x the fidelity's epochs: 250 code,
500 paper; RecDiscNet validates on 4 (code) or 1 (paper) copies per subject).

``--flops-only`` counts parameters and forward+backward FLOP per sample on the
meta device (no memory, no timing; any size on a CPU) and the FLOP of the
whole paper grid; with ``--tflops`` (an achieved throughput, e.g. one measured
here on a GPU) it converts them into device-hours.

Usage::

    python benchmarks/train_step.py --size smoke|quick|paper [--model dae|recdisc|both]
        [--steps 5] [--compile] [--fidelity code|paper|both] [--json out.json]
    python benchmarks/train_step.py --flops-only --size paper --fidelity both [--tflops 220]

On a CPU keep ``--size paper`` to ``--steps 1`` (a RecDiscNet step takes minutes there).
"""
from __future__ import annotations

import argparse
import dataclasses
import resource
import time

import torch

from dmrilib import fidelity as fid
from dmrilib.config import load_profile
from dmrilib.models import ModelConfig
from dmrilib.noise import JoodConfig, add_jood
from dmrilib.train import TrainConfig, _build, _Step, resolve_device

CHANNELS = 64
BATCH = 4
VARIANTS = {"dae": "lsd512-sigmoid", "recdisc": "mix-mix-half"}
#: Paper cohort per fold: 24 training + 4 validation healthy subjects.
PAPER_TRAIN, PAPER_VAL, PAPER_FOLDS, PAPER_CONFIGS = 24, 4, 7, 12


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


def _bench(model: str, mode: str, size: str, device: torch.device, steps: int, compile_: bool,
           fidelity: str = "code") -> dict:
    grid, model_config, radius, crop = _sizes(size, fidelity)
    if model == "recdisc" and crop is not None:
        grid = crop  # the profile trains RecDiscNet on windows of this size
    fast = mode == "fast"
    cuda = device.type == "cuda"
    cfg = TrainConfig(epochs=1, batch_size=BATCH, lr=1e-4, precision="bf16" if fast and cuda else "fp32",
                      channels_last=fast and cuda, compile=fast and compile_, device=device.type,
                      jood_radius=radius)
    variant = VARIANTS[model]
    net = _build(model, variant, model_config, CHANNELS, grid, seed=0).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    jood = JoodConfig.from_variant(variant, radius=radius) if model == "recdisc" else None
    step = _Step(model, net, cfg, jood, device)
    loss_fn = torch.compile(step.loss) if cfg.compile else step.loss

    data_dev = torch.rand(BATCH, CHANNELS, *grid, device=device if fast else "cpu")
    brain = torch.zeros(BATCH, *grid, dtype=torch.bool, device=data_dev.device)
    brain[:, grid[0] // 8: -grid[0] // 8, grid[1] // 8: -grid[1] // 8, grid[2] // 8: -grid[2] // 8] = True
    gen = torch.Generator(device=data_dev.device).manual_seed(0)

    def one_step() -> torch.Tensor:
        clean, mask_in = data_dev, brain
        if model == "dae":
            clean = clean.to(device, non_blocking=True)
            eps = torch.randn(BATCH, net.lsd, generator=gen, device=data_dev.device).to(device)
            loss = loss_fn(clean, latent_noise=eps)
        else:
            disturbed, mask = add_jood(clean, mask_in, jood, gen)  # CPU-side in the reference
            loss = loss_fn(clean.to(device), disturbed=disturbed.to(device), patch_mask=mask.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    one_step()  # warm-up (and compilation)
    _sync(device)
    flops = None
    if mode == "reference":
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            one_step()
        flops = counter.get_total_flops()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        one_step()
    _sync(device)
    seconds = (time.perf_counter() - t0) / steps
    peak = (torch.cuda.max_memory_allocated(device) if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"model": model, "variant": variant, "mode": mode, "size": size, "fidelity": fidelity, "grid": list(grid),
            "precision": cfg.precision, "channels_last": cfg.channels_last, "compile": cfg.compile,
            "step_s": seconds, "samples_per_s": BATCH / seconds, "peak_mem_gib": peak / 2**30,
            "flop_per_step": flops, "parameters": sum(p.numel() for p in net.parameters())}


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


def _paper_hours(model: str, step_s: float, fidelity: str = "code") -> float:
    epochs, steps = _paper_grid(model, fidelity)
    return steps * step_s * epochs * PAPER_FOLDS * PAPER_CONFIGS / 3600


def _flops_only(size: str, which: str, fidelities: tuple[str, ...], tflops: float | None) -> list[dict]:
    """Parameters and forward+backward FLOP per sample, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from dmrilib.models import build_model, dae_loss, recdisc_loss

    rows = []
    for fidelity in fidelities:
        grid, model_config, _, _ = _sizes(size, fidelity)
        for model in (("dae", "recdisc") if which == "both" else (which,)):
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("smoke", "quick", "paper"), default="smoke")
    parser.add_argument("--model", choices=("dae", "recdisc", "both"), default="both")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--flops-only", action="store_true",
                        help="count parameters and FLOP per sample on the meta device (no timing; any size on a CPU)")
    parser.add_argument("--fidelity", choices=("code", "paper", "both"), default=None,
                        help="architectures: the authors' code, the paper reading, or both "
                             "(default: code; both with --flops-only)")
    parser.add_argument("--tflops", type=float, default=None,
                        help="with --flops-only: achieved TFLOP/s that turns FLOP into device-hours")
    args = parser.parse_args(argv)
    chosen = args.fidelity or ("both" if args.flops_only else "code")
    fidelities = ("code", "paper") if chosen == "both" else (chosen,)
    if args.flops_only:
        return _flops_only(args.size, args.model, fidelities, args.tflops)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    peak, peak_kind = _matmul_peak(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; measured {peak_kind} matmul peak {peak:.2f} TFLOP/s")
    results = []
    for fidelity, model in [(f, m) for f in fidelities
                            for m in (("dae", "recdisc") if args.model == "both" else (args.model,))]:
        ref = _bench(model, "reference", args.size, device, args.steps, args.compile, fidelity)
        fast = _bench(model, "fast", args.size, device, args.steps, args.compile, fidelity)
        for r in (ref, fast):
            r["flop_per_step"] = ref["flop_per_step"]
            r["tflops"] = r["flop_per_step"] / r["step_s"] / 1e12
            r["fraction_of_peak"] = r["tflops"] / peak
            r["paper_grid_device_hours"] = (_paper_hours(model, r["step_s"], fidelity) if args.size == "paper"
                                            else None)
            r["device"] = name
            results.append(r)
            print(f"{model:8s} {fidelity:5s} {r['mode']:9s} {args.size:6s} step {r['step_s']*1e3:9.1f} ms  "
                  f"{r['samples_per_s']:7.2f} samples/s  peak {r['peak_mem_gib']:6.2f} GiB  "
                  f"{r['flop_per_step']/1e12:8.3f} TFLOP/step  {r['tflops']:7.3f} TFLOP/s "
                  f"({100*r['fraction_of_peak']:5.1f}% of peak)  params {r['parameters']/1e6:7.2f} M"
                  + (f"  full grid ~{r['paper_grid_device_hours']:.1f} device-h" if r['paper_grid_device_hours'] else ""))
        print(f"{model:8s} {fidelity:5s} speed-up fast/reference: {ref['step_s'] / fast['step_s']:.2f}x")
    if args.json:
        from dmrilib._atomic import write_json_atomic

        write_json_atomic(args.json, {"device": name, "matmul_peak_tflops": peak, "peak_kind": peak_kind,
                                      "results": results})
    return results


if __name__ == "__main__":
    main()
