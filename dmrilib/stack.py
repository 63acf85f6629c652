"""Several folds of one DAE configuration trained at once on one device, as stacked models.

The DAE is small: on an H200 one training step of the paper-size network
uses about 6% of the GPU's bf16 peak (``benchmarks/RESULTS.md``), because its
late layers are tiny and every kernel launch costs about as much as the work
it does. :func:`train_stacked` trains ``K`` runs that differ only in their
fold (same model, variant and settings) as one stacked network: the ``K``
sets of weights are stacked along a new leading dimension and one forward
and backward pass evaluates all of them with :func:`torch.func.vmap` (which
turns the ``K`` convolutions into one grouped convolution). One Adam
optimiser steps the stacked weights; Adam works element by element, so each
run sees exactly the update it would see alone.

Each run keeps its own fold, visiting order, latent noise (from the same
seeded generators as :func:`dmrilib.train.train_run`), validation loss, best
epoch, run folder, checkpoints (the format of ``train_run``, so prediction,
resume and ``dmri predict`` do not know the difference) and ``run.json``.
The wall time of a stacked epoch is shared equally by its runs, so the sum
of the runs' ``train_time_s`` is the device time spent.

Stacking is a speed setting (``train.stack_folds``, not part of the config
hash), like ``compile``: the arithmetic is the same as training the runs one
by one, but a grouped convolution rounds differently from ``K`` separate
ones, so on a CPU the weights agree with ``train_run``'s to float32 rounding
(``tests/test_stack.py``), not bit for bit. The default (``stack_folds: 1``)
trains every run alone, unchanged.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from dmrilib._atomic import write_csv_atomic
from dmrilib.checkpoint import CHECKPOINT_FORMAT, resume, run_hash, seeded_generator
from dmrilib.crossval import TrainConfig
from dmrilib.models import ModelConfig
from dmrilib.variants import DAE

__all__ = ["StackedModels", "StackMember", "stacked_dae_loss", "train_stacked"]


class StackedModels:
    """``K`` networks of one architecture as stacked weights, evaluated together with ``vmap``.

    Parameters
    ----------
    nets : sequence of nn.Module
        At least one network, all of the same class and shapes (e.g. the
        same configuration built ``K`` times). Their weights and buffers are
        copied; the networks themselves are not changed.

    Attributes
    ----------
    params : dict of str to Tensor
        Leaf tensors of shape ``(K, *p.shape)`` that require grad, keyed as
        ``nets[0].named_parameters()``.
    buffers : dict of str to Tensor
        Stacked buffers (BatchNorm running statistics), updated in place by
        forward passes in training mode, as a single network's are.

    Notes
    -----
    Call the object with inputs stacked along a new first dimension of size
    ``K`` (``x[k]`` goes to network ``k``); outputs carry the same leading
    dimension. Arguments passed as None are given to every network as None.
    """

    def __init__(self, nets: Sequence[nn.Module]) -> None:
        nets = list(nets)
        if not nets:
            raise ValueError("StackedModels needs at least one network.")
        first = nets[0]
        for k, net in enumerate(nets[1:], start=1):
            if type(net) is not type(first):
                raise ValueError(f"StackedModels: network {k} is a {type(net).__name__}, network 0 a "
                                 f"{type(first).__name__}; only networks of one architecture stack.")
            shapes = {n: tuple(t.shape) for n, t in net.state_dict().items()}
            expected = {n: tuple(t.shape) for n, t in first.state_dict().items()}
            if shapes != expected:
                raise ValueError(f"StackedModels: network {k} has other weight shapes than network 0.")
        params, buffers = stack_module_state(nets)
        self.params: dict[str, torch.Tensor] = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
        self.buffers: dict[str, torch.Tensor] = {n: b.detach().clone() for n, b in buffers.items()}
        # A weightless copy that only lends its structure (and training flag) to functional_call.
        self._base = copy.deepcopy(first).to("meta")
        self._keys = list(first.state_dict().keys())
        self.k = len(nets)

    def parameters(self) -> list[torch.Tensor]:
        """The stacked weights, in the order of a single network's ``parameters()``."""
        return list(self.params.values())

    def to(self, device: torch.device | str) -> StackedModels:
        """Move the stacked weights and buffers to ``device`` (in place; returns self)."""
        self.params = {n: p.detach().to(device).requires_grad_(True) for n, p in self.params.items()}
        self.buffers = {n: b.to(device) for n, b in self.buffers.items()}
        if torch.device(device).type == "cuda":
            # Plain tensors, not nn.Parameters: without this, CUDA graphs (compile_mode
            # "reduce-overhead") would copy every weight into the graph at each replay.
            for tensor in (*self.params.values(), *self.buffers.values()):
                torch._dynamo.mark_static_address(tensor)
        return self

    def train(self, mode: bool = True) -> StackedModels:
        self._base.train(mode)
        return self

    def eval(self) -> StackedModels:
        return self.train(False)

    def functional(self, fn: Any) -> Any:
        """``vmap`` of ``fn(net, *args)`` over the stack: ``net`` is member ``k`` as a callable module.

        ``fn`` receives a callable that runs the network with member ``k``'s
        weights and the per-member slices of the stacked arguments; None
        arguments stay None for every member.
        """
        base = self._base

        def member(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], *args: Any) -> Any:
            return fn(lambda *inputs: functional_call(base, (params, buffers), inputs), *args)

        def call(*args: Any) -> Any:
            in_dims = (0, 0) + tuple(None if a is None else 0 for a in args)
            return vmap(member, in_dims=in_dims)(self.params, self.buffers, *args)

        return call

    def __call__(self, *inputs: Any) -> Any:
        return self.functional(lambda net, *args: net(*args))(*inputs)

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Network ``k``'s ``state_dict`` (detached views, keys in a single network's order)."""
        if not 0 <= k < self.k:
            raise IndexError(f"StackedModels has {self.k} networks, asked for {k}.")
        merged = {**self.params, **self.buffers}
        return {n: merged[n][k].detach() for n in self._keys}

    def member_optimizer_state(self, optimizer: torch.optim.Optimizer, k: int) -> dict[str, Any]:
        """Network ``k``'s share of an element-wise optimiser's ``state_dict`` (e.g. Adam).

        The result loads into an optimiser built over network ``k``'s
        ``parameters()`` alone, as if it had trained alone.
        """
        full = optimizer.state_dict()
        state = {i: {name: (value[k] if torch.is_tensor(value) and value.dim() > 0 else value)
                     for name, value in entry.items()}
                 for i, entry in full["state"].items()}
        return {"state": state, "param_groups": copy.deepcopy(full["param_groups"])}

    def load_optimizer_states(self, optimizer: torch.optim.Optimizer,
                              states: Sequence[Mapping[str, Any]]) -> None:
        """Stack the members' optimiser ``state_dict``\\ s (one per network, same steps) into ``optimizer``."""
        if len(states) != self.k:
            raise ValueError(f"load_optimizer_states: {len(states)} states for {self.k} networks.")
        first = states[0]
        stacked: dict[int, dict[str, Any]] = {}
        for i, entry in first["state"].items():
            stacked[i] = {}
            for name, value in entry.items():
                if torch.is_tensor(value) and value.dim() > 0:
                    stacked[i][name] = torch.stack([s["state"][i][name] for s in states])
                else:
                    steps = {float(s["state"][i][name]) for s in states}
                    if len(steps) > 1:
                        raise ValueError(f"load_optimizer_states: the networks' optimisers differ in {name!r} "
                                         f"({sorted(steps)}); stacked runs must be at the same step.")
                    stacked[i][name] = value
        optimizer.load_state_dict({"state": stacked, "param_groups": copy.deepcopy(first["param_groups"])})


def stacked_dae_loss(stack: StackedModels, config: TrainConfig, device: torch.device) -> Any:
    """The DAE loss of :class:`dmrilib.train._Step`, per member: ``fn(clean, latent_noise) -> (K,)``.

    ``clean`` has shape ``(K, B, C, X, Y, Z)``; ``latent_noise`` ``(K, B, lsd)``
    or None (the decoder reads the posterior mean, as in validation).
    ``config.channels_last`` does not apply: ``vmap`` cannot query memory
    formats, and it folds the ``K`` networks into the channels of one
    grouped convolution whose layout it chooses itself.
    """
    from dmrilib.train import _Step

    config = dataclasses.replace(config, channels_last=False)

    def member_loss(net: Any, clean: torch.Tensor, latent_noise: torch.Tensor | None) -> torch.Tensor:
        return _Step(DAE, net, config, None, device).loss(clean, latent_noise=latent_noise)

    return stack.functional(member_loss)


@dataclasses.dataclass(frozen=True)
class StackMember:
    """One run of a stack: its fold and run folder.

    ``acquisition`` is what :func:`dmrilib.train.train_run` stores for
    ``dmri predict`` (see there).
    """

    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    out_dir: Path
    acquisition: Mapping[str, Any] | None = None


@dataclasses.dataclass
class _Member:
    """One run's own objects during a stacked training: a single network and optimiser mirror its share."""

    spec: StackMember
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    start_epoch: int
    best: Any
    fold: Any
    pool: Any
    val_batches: list
    meta: dict[str, Any]
    acquisition: dict[str, Any] | None
    rows: list[dict[str, Any]]
    wall: float


def train_stacked(volumes: np.ndarray, brain_masks: np.ndarray, subject_ids: Sequence[str], *,
                  members: Sequence[StackMember], model: str, variant: str, model_config: ModelConfig,
                  train_config: TrainConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Train several folds of one DAE configuration at once on one device.

    Each member ends with the run folder :func:`dmrilib.train.train_run`
    would write for its fold (checkpoints, ``log.csv``, ``run.json``); see
    the module docstring for what is shared and what is not.

    Parameters
    ----------
    volumes, brain_masks, subject_ids
        As for :func:`dmrilib.train.train_run`; every member's subjects must
        be among ``subject_ids``.
    members : sequence of StackMember
        The runs, one per fold. All must have as many training subjects as
        each other, and as many validation subjects (every step of the stack
        takes one batch of each). One member trains as ``train_run`` would.
    model : {"dae"}
        Only the DAE stacks (RecDiscNet's convolutions already use a GPU well).
    variant, model_config, train_config
        Shared by all members.
    progress : bool
        A tqdm bar over epochs.

    Returns
    -------
    list of dict
        Each member's ``run.json`` content, in the order of ``members``.

    Raises
    ------
    ValueError
        For another model, mismatched fold sizes, a run folder named twice,
        or inputs ``train_run`` would refuse.

    Notes
    -----
    Members resumed at different epochs (e.g. one was trained alone before)
    cannot share steps: they are then trained one after another with
    ``train_run``, which gives the same runs.
    """
    from dmrilib import train as tr

    if model != DAE:
        raise ValueError(f"train_stacked: only the DAE stacks, got model {model!r}; train RecDiscNet runs "
                         "one by one (train.stack_folds applies to the DAE only).")
    members = _check_members(members)
    cfg = train_config
    checked = [tr._check_inputs(volumes, brain_masks, subject_ids, None, train_ids=m.train_ids,
                                val_ids=m.val_ids, model=model, model_config=model_config, cfg=cfg)
               for m in members]
    ids, in_channels, grid, _ = checked[0]
    state = [_member(m, volumes, brain_masks, ids, in_channels, grid, model, variant, model_config, cfg)
             for m in members]
    if len({s.start_epoch for s in state}) > 1:
        return [tr.train_run(volumes, brain_masks, subject_ids, train_ids=m.train_ids, val_ids=m.val_ids,
                             model=model, variant=variant, model_config=model_config, train_config=cfg,
                             out_dir=m.out_dir, acquisition=m.acquisition, progress=progress) for m in members]

    device = next(state[0].net.parameters()).device
    stack = StackedModels([s.net for s in state]).to(device)
    optimizer = torch.optim.Adam(stack.parameters(), lr=cfg.lr, fused=device.type == "cuda" or None)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_gamma)
    start = state[0].start_epoch
    if start > 0:
        stack.load_optimizer_states(optimizer, [s.optimizer.state_dict() for s in state])
        scheduler.load_state_dict(state[0].scheduler.state_dict())
    loss_fn = tr.compiled(stacked_dae_loss(stack, cfg, device), cfg)
    lsd = int(state[0].net.lsd)  # type: ignore[arg-type]

    bar = tr._progress_bar(progress, cfg.epochs, start, f"{model} {variant} x{len(state)} folds")
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        totals, lr = _train_epoch(epoch, state, stack, optimizer, scheduler, loss_fn, cfg, lsd, device)
        validate = (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs
        val_losses = _validation_losses(state, stack, loss_fn) if validate else [math.nan] * len(state)
        train_losses = (totals / state[0].pool.n_train).tolist()  # the one host sync per epoch
        share = (time.perf_counter() - t0) / len(state)
        for k, s in enumerate(state):
            s.rows.append({"epoch": epoch, "train_loss": train_losses[k], "val_loss": val_losses[k], "lr": lr,
                           "epoch_time_s": share})
            s.wall += share
            _save_member(k, s, stack, optimizer, scheduler, cfg, epoch, val_losses[k], validate=validate)
        tr._advance(bar, train=" ".join(f"{x:.4g}" for x in train_losses))
    tr._close(bar)
    return [tr._record(Path(s.spec.out_dir), s.meta, cfg, s.best, s.wall, device, s.net,
                       train_ids=s.spec.train_ids, val_ids=s.spec.val_ids, acquisition=s.acquisition)
            for s in state]


def _check_members(members: Sequence[StackMember]) -> list[StackMember]:
    """The members as a list, or a ValueError when they cannot share steps."""
    members = list(members)
    if not members:
        raise ValueError("train_stacked: no members to train.")
    outs = [Path(m.out_dir).resolve() for m in members]
    if len(set(outs)) != len(outs):
        raise ValueError(f"train_stacked: a run folder is named twice in {[str(o) for o in outs]}.")
    sizes = {(len(m.train_ids), len(m.val_ids)) for m in members}
    if len(sizes) > 1:
        raise ValueError(f"train_stacked: stacked folds must have equal numbers of training and validation "
                         f"subjects, got (train, val) sizes {sorted(sizes)}; set train.stack_folds: 1 or use "
                         "folds of equal size.")
    return members


def _save_member(k: int, member: _Member, stack: StackedModels, optimizer: torch.optim.Optimizer, scheduler: Any,
                 cfg: TrainConfig, epoch: int, val_loss: float, *, validate: bool) -> None:
    """Member ``k``'s epoch in its run folder, as ``train_run`` saves it (its share of the stack copied out)."""
    from dmrilib import train as tr

    member.net.load_state_dict(stack.member_state(k))
    if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:  # a resume point is due
        member.optimizer.load_state_dict(stack.member_optimizer_state(optimizer, k))
    out = Path(member.spec.out_dir)
    tr._save_epoch(out, {**member.meta, "epoch": epoch, "val_loss": val_loss, "acquisition": member.acquisition},
                   member.best, member.net, member.optimizer, scheduler, member.rows, member.wall, cfg,
                   validate=validate)
    write_csv_atomic(out / "log.csv", member.rows, tr._LOG_FIELDS)


def _member(spec: StackMember, volumes: np.ndarray, brain_masks: np.ndarray, ids: Sequence[str], in_channels: int,
            grid: Sequence[int], model: str, variant: str, model_config: ModelConfig, cfg: TrainConfig) -> _Member:
    """One run's network (its resume point loaded), fold data, visiting order and validation batches."""
    from dmrilib import train as tr

    chash = run_hash(model, variant, model_config, cfg, in_channels=in_channels, grid=grid,
                     train_ids=spec.train_ids, val_ids=spec.val_ids)
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device, net, optimizer, scheduler = tr._setup(model, variant, model_config, cfg, in_channels, grid)
    point = resume(out / "checkpoint-last.pt", expected_format=CHECKPOINT_FORMAT, expected_hash=chash, net=net,
                   optimizer=optimizer, scheduler=scheduler, device=device, trainer="train_stacked")
    best = tr._Best(float(point.payload.get("best_val_loss", math.inf)), int(point.payload.get("best_epoch", -1)))
    fold = tr._FoldData.resident(volumes, brain_masks, None, ids, spec.train_ids, spec.val_ids, device)
    meta = {"format": CHECKPOINT_FORMAT, **tr._meta_config(model, variant, model_config, in_channels, grid),
            "config_hash": chash, "seed": cfg.seed}
    acquisition = tr._plain(dict(spec.acquisition)) if spec.acquisition is not None else None
    return _Member(spec, net, optimizer, scheduler, point.start_epoch, best, fold,
                   tr._TrainingPool.build(model, fold, spec.train_ids, None, cfg, device),
                   tr._validation_batches(fold, spec.val_ids, None, cfg, device), meta, acquisition,
                   point.log, point.train_time_s)


def _train_epoch(epoch: int, state: Sequence[_Member], stack: StackedModels, optimizer: torch.optim.Optimizer,
                 scheduler: Any, loss_fn: Any, cfg: TrainConfig, lsd: int,
                 device: torch.device) -> tuple[torch.Tensor, float]:
    """One stacked epoch: each member's summed training loss (shape (K,), on the device) and the lr."""
    cpu = torch.device("cpu")
    # every member draws exactly what train_run draws for its fold
    orders, noise = [], []
    for s in state:
        orders.append(s.pool.order(seeded_generator(cpu, cfg.seed, "order", epoch), device))
        noise.append(seeded_generator(device, cfg.seed, "noise", epoch))
    stack.train()
    totals = torch.zeros(len(state), device=device)
    for start in range(0, state[0].pool.n_train, cfg.batch_size):
        clean = torch.stack([s.fold.train.index_select(0, order[start:start + cfg.batch_size]).float()
                             for s, order in zip(state, orders)])
        eps = torch.stack([torch.randn(clean.shape[1], lsd, generator=gen, device=device) for gen in noise])
        optimizer.zero_grad(set_to_none=True)
        losses = loss_fn(clean, eps)
        losses.sum().backward()
        optimizer.step()
        totals += losses.detach() * clean.shape[1]
    lr = optimizer.param_groups[0]["lr"]
    scheduler.step()
    return totals, lr


def _validation_losses(state: Sequence[_Member], stack: StackedModels, loss_fn: Any) -> list[float]:
    """Each member's mean loss over its fixed validation batches (the posterior mean decodes)."""
    stack.eval()
    total = None
    with torch.no_grad():
        for batches in zip(*(s.val_batches for s in state)):
            losses = loss_fn(torch.stack([clean for clean, _, _ in batches]), None)
            total = losses if total is None else total + losses
    assert total is not None
    return (total / len(state[0].val_batches)).tolist()
