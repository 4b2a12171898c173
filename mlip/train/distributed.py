"""Multi-process training with torch.distributed, launched by ``torchrun``.

``torchrun --nproc_per_node N -m mlip train CONFIG.yaml`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``) in their environment;
:func:`setup` reads them and initialises the process group: NCCL with one GPU per process
(``cuda:LOCAL_RANK``) when the config's device resolves to CUDA, gloo on the CPU. Without those
variables (or with ``WORLD_SIZE=1``) training is the ordinary single-process loop.

How the trainer shares work (see :mod:`mlip.train.trainer`):

* every rank reads the data and builds the same train/validation split (it depends on the seed);
  statistics are computed on rank 0 only and broadcast;
* ``data.batch_size`` is the *global* batch: each epoch's permutation of the training set is a
  function of (seed, epoch) as in one process, cut into the same global batches, and rank r takes
  the structures ``batch[r::world_size]`` of each one. The global batches therefore do not
  depend on the number of processes;
* the loss of each rank is its share of the global batch's loss (sums over its structures
  divided by the global label counts, which are all-reduced); DistributedDataParallel averages
  gradients, so each rank's loss is multiplied by ``world_size`` and the summed gradient is the
  gradient of the whole batch, as in one process;
* training and validation metrics are sums and counts, all-reduced;
* only rank 0 writes the log, metrics.csv, checkpoints, model files and plots.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import torch

from mlip.errors import InputError
from mlip.train.metrics import ErrorAccumulator


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def setup(device_name: str) -> tuple:
    """(DistInfo, device) from the torchrun environment; initialises the process group once."""
    import torch.distributed as dist

    world = env_world_size()
    if world <= 1:
        return SINGLE, None
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise InputError("device cuda requested but no GPU is visible", key="device")
        if local_rank >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                             "use --nproc_per_node <= the number of GPUs", key="device")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                    backend=backend), device


def cleanup() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _reduce_device(info: DistInfo) -> torch.device:
    return torch.device("cuda", info.local_rank) if info.backend == "nccl" else torch.device("cpu")


def all_reduce_sum(values: Sequence[float], info: DistInfo) -> List[float]:
    """Element-wise sum over ranks of a list of floats (float64); identity in one process."""
    if not info.enabled:
        return [float(v) for v in values]
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_reduce_device(info))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def all_reduce_tensor(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks of a (detached) tensor, returned on the tensor's device."""
    if not info.enabled:
        return t
    import torch.distributed as dist

    out = t.detach().to(_reduce_device(info), torch.float64).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects)."""
    if not info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj if info.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=_reduce_device(info))
    return box[0]


def on_main(fn: Callable[[], Any], info: DistInfo) -> Any:
    """``fn()`` run on rank 0, its result (or its InputError, raised) on every rank: work done
    once (statistics, finding the checkpoint) gives one answer by construction."""
    if not info.enabled:
        return fn()
    from mlip.errors import InputError

    result: Any = None
    if info.is_main:
        try:
            result = ("ok", fn())
        except InputError as exc:
            result = ("error", exc)
    result = broadcast_object(result, info)
    if result[0] == "error":
        raise result[1]
    return result[1]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def shard(indices: Sequence[int], info: DistInfo) -> List[int]:
    """This rank's share of a global batch: every world_size-th structure from its rank on."""
    return list(indices[info.rank::info.world_size])


def average_gradients(params: Sequence[torch.nn.Parameter], info: DistInfo) -> None:
    """Average ``p.grad`` over ranks in one all-reduce, as DistributedDataParallel does.

    For a model that does not run through DDP's forward (the traced and compiled training
    step), which leaves DDP's gradient hooks unarmed. Missing gradients count as zeros.
    """
    if not info.enabled or not params:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]).to(_reduce_device(info))
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat = (flat / info.world_size).to(grads[0].device)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
        offset += n


def broadcast_parameters(module: torch.nn.Module, info: DistInfo) -> None:
    """Rank 0's parameters and buffers on every rank (what DDP does when it wraps a model)."""
    if not info.enabled:
        return
    import torch.distributed as dist

    for t in list(module.parameters()) + list(module.buffers()):
        buf = t.detach().to(_reduce_device(info))
        dist.broadcast(buf, src=0)
        with torch.no_grad():
            t.copy_(buf.to(t.device))


def resolve_device(name: str) -> torch.device:
    """The torch device of a config's ``device``: auto = cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("cuda requested but torch.cuda.is_available() is False (CPU-only torch, or no GPU "
                         "visible); use device: auto or cpu", key="device")
    return torch.device(name)


def reduce_accumulator(acc: ErrorAccumulator, info: DistInfo, keep: bool) -> ErrorAccumulator:
    """The sum over ranks of ``acc`` when ``keep`` (else an empty one); ``acc`` itself in one process."""
    if not info.enabled:
        return acc
    values = [x for q in sorted(acc.sums) for x in acc.sums[q]] + [acc.loss_sum, float(acc.loss_count)]
    total = all_reduce_sum(values, info)
    out = ErrorAccumulator()
    if keep:
        for i, q in enumerate(sorted(acc.sums)):
            out.sums[q] = total[3 * i: 3 * i + 3]
        out.loss_sum, out.loss_count = total[-2], int(round(total[-1]))
    return out
