"""Data-parallel training across processes: the plumbing behind ``torchrun … gcnnkit train``.

:func:`gcnnkit.run.training.train` calls :func:`setup` first. Outside ``torchrun`` (no
``WORLD_SIZE`` > 1 in the environment and no process group yet) it returns a single-process
:class:`Context` and every helper here is a no-op, so single-process runs are unchanged.
Under ``torchrun --nproc_per_node=N`` each process

* joins the default process group (``nccl`` on CUDA, ``gloo`` on CPU) and, on CUDA, uses
  ``cuda:LOCAL_RANK`` (:func:`gcnnkit.run.rundir.resolve_device` with :func:`local_rank`);
* builds the same model from the same seed and wraps it in ``DistributedDataParallel``
  (:func:`wrap`): gradients are averaged across processes in the backward pass;
* takes its contiguous share of every *global* batch (:func:`shard`): ``train.batch_size``
  is the batch of one optimiser step summed over all processes, and the loss is weighted so
  the averaged gradient is the gradient of the global batch's mean loss;
* evaluates every ``world_size``-th test batch, with batches cut exactly as a single process
  cuts them, and sums the correct counts (:func:`gcnnkit.run.evaluation.evaluate` with
  ``shard`` and ``total=``:func:`all_sum`): each test sample is counted once, and the
  accuracies equal those of a single-process evaluation of the same weights;
* leaves the run directory to rank 0 (:attr:`Context.is_main`), which decides it, reads it
  on ``--resume`` and hands the outcome to the others (:func:`broadcast_object`), so no file
  system needs to be shared between nodes.

See ``docs/distributed.md`` for launching, semantics and determinism.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gcnnkit.core.errors import GcnnkitError

T = TypeVar("T")

#: How long a collective (e.g. the barrier behind which ranks wait while rank 0 downloads a
#: data set) may wait before the process group gives up.
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Context:
    """Where this process stands: rank ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "nccl" or "gloo"; None in a single process
    owns_group: bool = False  # True when setup() created the process group (teardown() destroys it)

    @property
    def enabled(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes the run directory."""
        return self.rank == 0


SINGLE = Context()


# ------------------------------------------------------------------------ setup, teardown
def launched() -> bool:
    """True when this process is one of several: ``torchrun`` set ``WORLD_SIZE`` > 1, or the
    caller already initialised a process group of more than one rank."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    """``LOCAL_RANK`` (set by torchrun); without it, in a process group someone else created, the
    global rank (one node assumed); else 0."""
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def setup(device: torch.device) -> Context:
    """Join the default process group when :func:`launched` (``nccl`` for a CUDA ``device``, else
    ``gloo``; rendezvous from torchrun's environment), and make ``device`` the current CUDA device.
    Returns :data:`SINGLE` when this process trains alone."""
    if not launched():
        return SINGLE
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=TIMEOUT, **kwargs)
    return Context(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank(),
        backend=dist.get_backend(),
        owns_group=owns,
    )


def teardown(ctx: Context) -> None:
    """Wait for every process (rank 0 has finished writing), then leave the process group if
    :func:`setup` created it."""
    if not ctx.enabled:
        return
    dist.barrier()
    if ctx.owns_group:
        dist.destroy_process_group()


def abandon(ctx: Context) -> None:
    """Leave the process group after an error, without waiting for the other processes (which
    may be stuck in a collective; torchrun stops them when this one exits)."""
    if ctx.enabled and ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def rank_zero_first(ctx: Context) -> Iterator[None]:
    """Run the block on rank 0, then on the first process of every other node, then on the rest:
    a data set missing on a file system is downloaded there once, never by two processes at once
    into one folder."""
    if not ctx.enabled:
        yield
        return
    if ctx.rank != 0:
        dist.barrier()  # 1: rank 0 is done
    if ctx.rank != 0 and ctx.local_rank != 0:
        dist.barrier()  # 2: this node's first process is done
    yield
    if ctx.rank == 0:
        dist.barrier()  # 1
    if ctx.rank == 0 or ctx.local_rank == 0:
        dist.barrier()  # 2


# ------------------------------------------------------------------------- communication
def broadcast_object(value: T, ctx: Context) -> T:
    """Rank 0's ``value`` on every rank (pickled: for objects of our own making)."""
    if not ctx.enabled:
        return value
    box = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T], ctx: Context) -> T:
    """``fn()`` run by rank 0 alone, its result returned on every rank. An exception it raises is
    raised on every rank (a :class:`~gcnnkit.core.errors.GcnnkitError` as it is, so each process
    stops with the same one-line user error; others as a ``RuntimeError`` naming it), so no
    process is left waiting for rank 0."""
    if not ctx.enabled:
        return fn()
    result, error, raised = None, None, None
    if ctx.is_main:
        try:
            result = fn()
        except Exception as exc:
            raised = exc
            error = exc if isinstance(exc, GcnnkitError) else RuntimeError(f"rank 0: {type(exc).__name__}: {exc}")
    result, error = broadcast_object((result, error), ctx)
    if raised is not None:
        raise raised
    if error is not None:
        raise error
    return result


def all_sum(values: Sequence[torch.Tensor | float | int], ctx: Context, device: torch.device) -> list[float]:
    """``values`` summed over all processes (as float64), returned as Python floats."""
    total = torch.stack([torch.as_tensor(v, device=device).detach().to(torch.float64) for v in values])
    if ctx.enabled:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.tolist()


@torch.no_grad()
def sync_state(model: nn.Module, ctx: Context) -> None:
    """Copy rank 0's parameters and saved buffers (batch-norm statistics) to every process.

    Parameters agree anyway (same start, all-reduced gradients); batch-norm running
    statistics do not (each process updates them with its own share of the batch, see
    :func:`wrap`). After this, every process holds exactly the state rank 0 checkpoints.
    """
    if not ctx.enabled:
        return
    for tensor in model.state_dict(keep_vars=True).values():  # parameters and persistent buffers
        dist.broadcast(tensor.detach(), src=0)


# ----------------------------------------------------------------------------- the model
def unused_parameters(model: nn.Module, image_shape: tuple[int, int, int], device: torch.device) -> list[str]:
    """Names of the parameters that a training-mode forward pass does not use (no gradient).

    Runs a copy of ``model`` on a zero batch, leaving ``model`` and the global RNG untouched.
    """
    probe = copy.deepcopy(model).train()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        probe(torch.zeros(2, *image_shape, device=device)).float().sum().backward()
    return [name for name, p in probe.named_parameters() if p.requires_grad and p.grad is None]


def wrap(model: nn.Module, ctx: Context, device: torch.device, image_shape: tuple[int, int, int]) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` (``model`` itself in a single process).

    * ``find_unused_parameters`` only when a probe pass (:func:`unused_parameters`) finds a
      parameter without gradient; it costs a graph traversal every step.
    * Buffers are not broadcast before every forward pass: in training mode the batch norms
      normalise with batch statistics, and the other buffers (native index tables, escnn's
      sampled bases) are constants. Running statistics are made rank 0's by :func:`sync_state`
      before each evaluation instead (one broadcast per epoch instead of one per step).
    """
    if not ctx.enabled:
        return model
    options: dict[str, Any] = {"find_unused_parameters": bool(unused_parameters(model, image_shape, device))}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:  # torch >= 2.13
        options["forward_sync_buffers"] = False
    else:
        options["broadcast_buffers"] = False
    if device.type == "cuda":
        options.update(device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(model, **options)


# ----------------------------------------------------------------------- data sharding
def shard(size: int, ctx: Context) -> tuple[slice, float]:
    """This process's share of a global batch of ``size`` samples, and its loss weight.

    The batch is cut into ``world_size`` contiguous pieces whose sizes differ by at most one
    (rank 0's is never smaller). Each process averages its loss over its piece; the weight
    ``len(piece) · world_size / size`` turns DDP's average over processes into the mean over
    the global batch, whatever the piece sizes. A process left without a sample (the last batch
    of an epoch being smaller than ``world_size``) gets sample 0 with weight 0, so that every
    process runs the same number of steps; weight 0 also keeps that sample out of the metrics.
    """
    if not ctx.enabled:
        return slice(0, size), 1.0
    base, extra = divmod(size, ctx.world_size)
    start = ctx.rank * base + min(ctx.rank, extra)
    count = base + (1 if ctx.rank < extra else 0)
    if count == 0:
        return slice(0, 1), 0.0
    return slice(start, start + count), count * ctx.world_size / size
