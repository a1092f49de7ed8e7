"""Data parallelism for the trainers: N processes (one per GPU) each take a slice of every batch and average their
gradients after backward, so N processes train the same model as one process on the whole batch.

`accelerate` starts the processes (`accelerate launch --multi_gpu`; torch's own launcher on CPU, where accelerate
needs MPI) and sets up the process group (`PartialState`). We average the gradients ourselves instead of wrapping
the model in `Accelerator.prepare` (DDP): the LAT adversary, the prefix cache and RMU call the model's blocks
directly, bypassing the wrapper's forward, and DDP would then not synchronise those gradients. Averaging after
backward works for every trainer's loss. With one process (no launcher) every function here is a no-op.

Methods whose step is a batch of independent examples shard: SFT, RT, LAT (each process attacks its own slice),
unlearning, DPO. R2D2's GCG test-case pool is computed by every process (the same on each), so only its SFT part
is split; it is correct but not faster.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache

import torch


def launched() -> bool:
    """True inside a process that a distributed launcher started (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@lru_cache(maxsize=1)
def _state():
    from accelerate import PartialState

    # accelerate only builds a CPU process group (gloo) when told the run is on CPU
    return PartialState(cpu=not torch.cuda.is_available())


def world_size() -> int:
    return _state().num_processes if launched() else 1


def rank() -> int:
    return _state().process_index if launched() else 0


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """This process's accelerator (cuda:<local rank>) or the CPU."""
    return torch.device(_state().device) if launched() else torch.device("cpu")


def shard(items: list) -> list:
    """This process's slice of a batch drawn identically on every process."""
    if world_size() == 1:
        return items
    if len(items) % world_size():
        raise ValueError(f"a batch of {len(items)} does not split evenly over {world_size()} processes "
                         f"(make every batch_size a multiple of model.processes)")
    return items[rank()::world_size()]


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over processes (every process gets it)."""
    if world_size() == 1:
        return value
    total = value.detach().clone().float()
    torch.distributed.all_reduce(total)
    return total / world_size()


def summed(values: dict[str, float]) -> dict[str, float]:
    """Each value summed over processes (work counters)."""
    if world_size() == 1:
        return values
    keys = sorted(values)
    total = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device())
    torch.distributed.all_reduce(total)
    return dict(zip(keys, total.tolist()))


def broadcast_parameters(params: list[torch.Tensor]) -> None:
    """Start every process from process 0's weights."""
    if world_size() == 1:
        return
    for param in params:
        torch.distributed.broadcast(param.data, src=0)


def average_gradients(params: list[torch.Tensor]) -> None:
    """Replace each gradient by its mean over processes (one flat all-reduce)."""
    if world_size() == 1:
        return
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in with_grad])
    torch.distributed.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for param in with_grad:
        count = param.grad.numel()
        param.grad.copy_(flat[offset: offset + count].view_as(param.grad))
        offset += count


def finish() -> None:
    if launched() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def launch_command(processes: int, module: str, argv: list[str]) -> list[str]:
    """The command that reruns `python -m module argv` as `processes` data-parallel processes."""
    if torch.cuda.is_available():
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", module, *argv]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            "-m", module, *argv]
