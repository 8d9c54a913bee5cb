"""Several processes, with PyTorch's own engine: torchrun starts them, DistributedDataParallel keeps them in step.

    torchrun --nproc-per-node 2 -m gptlab train ...                       # 2 processes on this machine
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29500 -m gptlab train ...               # on each of 2 machines

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK for each process. Each process draws its own share of the
global batch; DDP averages the gradients over processes in the backward pass, so every process takes the
same step. Processes talk through gloo on CPUs and NCCL on GPUs; small control messages (stop now?) go
through a gloo group, which needs no GPU synchronization. One process alone needs none of this.

A model's buffers must be the same in every process (the GPT's are constant position tables): DDP is told
not to broadcast them before each forward.
"""

from __future__ import annotations

import inspect
import os
from contextlib import contextmanager

import torch

from gptlab.errors import GptlabError

_RUNS = 0  # runs this process has started under torchrun


class Distributed:
    """This process's place among the processes of a run: rank, world size, and the collectives training needs.
    With one process every collective is the identity."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.control = None  # a gloo group for small CPU-side messages

    @classmethod
    def from_env(cls) -> Distributed:
        env = os.environ
        if int(env.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process: cuda becomes cuda:LOCAL_RANK (an explicit index is kept)."""
        if self.active and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def start(self, device: torch.device) -> None:
        if not self.active:
            return
        import torch.distributed as dist
        import torch.distributed.nn.functional  # noqa: F401  before any group exists: see close()

        store = self._store("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device, **store)
            self.control = dist.new_group(backend="gloo")
        else:
            dist.init_process_group("gloo", **store)
            self.control = dist.group.WORLD

    def _store(self, backend: str) -> dict:
        """Where the processes meet: the launcher's store (torchrun's; rank 0's under a plain env:// launch), read
        from the same variables init_process_group reads, under a prefix of this run's own, with the backend's
        default timeout. The processes of a second run (gptlab.train called again in the same processes) would
        otherwise find the first run's addresses there and connect to ports that closed with it. Every process
        must start the same runs in the same order, as a script under torchrun does: the prefixes count them."""
        import torch.distributed as dist
        from torch.distributed.constants import default_pg_nccl_timeout, default_pg_timeout

        global _RUNS
        _RUNS += 1
        timeout = (default_pg_nccl_timeout or default_pg_timeout) if backend == "nccl" else default_pg_timeout
        store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
        store.set_timeout(timeout)
        return dict(store=dist.PrefixStore(f"gptlab-run-{_RUNS}", store), rank=rank, world_size=world_size,
                    timeout=timeout)

    def close(self) -> None:
        """Destroy the process groups for good, gloo's threads with them, while Python is still whole.

        A gloo group stops and joins its worker threads only when the last reference to it goes. A thread still
        running at interpreter exit may be dropping a finished collective whose tensors are Python objects: it
        waits for the GIL, Python ends it inside a C++ destructor, and the process aborts ("terminate called
        without an active exception") after a run that succeeded. So nothing may hold a group past this point:
        not self.control, not the DDP wrapper (the trainer has dropped it), and not torch.distributed.nn.functional,
        whose functions keep group.WORLD as a default argument: DDP imports it, so start() imports it first."""
        if self.active:
            import torch.distributed as dist

            self.control = None  # on CPU this is the WORLD group itself
            if dist.is_initialized():
                dist.destroy_process_group()

    def wrap(self, model: torch.nn.Module, device: torch.device, fsdp: bool = False,
             dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        """The model as training calls it: under DDP with several processes, the model itself otherwise; with
        fsdp, sharded in place by FSDP2 (shard). Its buffers are constant tables (positions), so DDP need not
        broadcast them before each forward."""
        if not self.active:
            return model
        if fsdp:
            return self.shard(model, dtype)
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:  # torch 2.13 and later
            return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

    def shard(self, model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
        """FSDP2: each of the model's shard units (its blocks) a group of its own, then the root, which keeps the
        rest (the token embedding and the head: tied, they stay one tensor). Every process holds 1/world_size of
        each parameter, its gradient and its optimizer state, and gathers a group's whole weights to compute
        with it. Below float32, the policy computes in `dtype` and averages the gradients in float32. Rank 0's
        initial weights are every process's first (each drew its own: DDP broadcasts them alike)."""
        import torch.distributed as dist
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        with torch.no_grad():
            for tensor in model.state_dict().values():
                dist.broadcast(tensor, 0)

        policy = MixedPrecisionPolicy(param_dtype=None if dtype == torch.float32 else dtype,
                                      reduce_dtype=torch.float32)
        for unit in model.shard_units():
            fully_shard(unit, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model

    def full_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """A sharded model's whole weights, on the CPU of rank 0 (every process takes part; the others get {})."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        model.reshard()  # (after a forward alone, an evaluation's, the root still holds its gathered weights)
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def full_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """A sharded model's optimizer state, whole and keyed by parameter name, on rank 0's CPU (every process
        takes part)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model.reshard()  # (the parameters registered must be the sharded ones the optimizer holds)
        return get_optimizer_state_dict(model, optimizer, options=options)

    def load_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """full_optimizer_state's state back into each process's shards (every process reads it whole)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))

    def mean(self, value: torch.Tensor) -> float:
        """The average of a scalar over processes, as a Python float (every process gets it)."""
        if self.active:
            import torch.distributed as dist

            value = value.detach().float().clone()
            dist.all_reduce(value)
            value /= self.world_size
        return float(value)

    def _reduce(self, number: float, op: str) -> float:
        if not self.active:
            return number
        import torch.distributed as dist

        t = torch.tensor([number], dtype=torch.float64)
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op), group=self.control)
        return float(t)

    def any(self, flag: bool) -> bool:
        """True on every process if it is true on any (so that all stop at the same step)."""
        return self._reduce(float(flag), "MAX") > 0

    def max(self, number: float) -> float:
        return self._reduce(number, "MAX")

    def sum(self, number: float) -> float:
        return self._reduce(number, "SUM")

    def gather(self, obj) -> list:
        """obj of every process, in rank order, on every process."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.control)
        return out

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier(group=self.control)

    @contextmanager
    def main_first(self):
        """The first process of each machine (local rank 0) runs the block first: downloads, tokenizer training,
        token files. The others then run it and find the results in the cache. If a first process fails, every
        process stops; the others raise quietly, since rank 0 says what went wrong."""
        first = self.local_rank == 0
        if first:
            try:
                yield
            except BaseException:
                self.any(True)
                raise
            self.any(False)
        else:
            if self.any(False):
                raise GptlabError("another process failed while preparing the data")
            yield
