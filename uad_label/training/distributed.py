"""Training on several processes (`uad train NAME --nproc N`): torchrun (`torch.distributed.run`) starts N
copies of the trainer; each joins the process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK),
wraps its network in DistributedDataParallel, takes its share of every epoch from a DistributedSampler, and
rank 0 alone writes weights, model card and logs. gloo on CPU, NCCL on GPUs (one GPU per process).

Equal to one process with the global batch (per-process batch x world size) when the trainer's randomness is
per sample (`sample_generator`), its loss is a mean over equally sized batches, and its batch norm statistics
span the global batch (`global_batch_norm`): the test trains 2 x B against 1 x 2B.

Trainers that draw a fresh batch every step (ppr, inpainting, patchddm) draw the global batch's case indices
from one generator that every rank advances alike and keep their `share`; everything drawn per sample (crops,
boxes, masks, noise) comes from `sample_generator` / `sample_rng`, keyed by step and global sample position.

A trainer opts in with `DISTRIBUTED = True` in its module; `supports(name)` says which do. The MONAI Label train
task (or any caller of `training.train`) with `nproc` > 1 runs `uad train` in a child torchrun (`run_request`).
"""
from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
from dataclasses import dataclass

import torch

from ..errors import InputError


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = ""
    owns_group: bool = False  # init() created the process group, so finish() destroys it

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and reports progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched() -> bool:
    """True inside a process torchrun started with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str) -> tuple[World, str]:
    """Join torchrun's process group (no-op in a single process); returns the world and this rank's device."""
    if not launched():
        return World(), device
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend)
    return World(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend(), owns), device


def finish(world: World) -> None:
    """Wait for every rank; leave the process group if init() joined it (a caller's own group stays)."""
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()
        if world.owns_group:
            dist.destroy_process_group()


def card(world: World, batch_per_process: int) -> dict:
    """The model card's record of the run's processes and batch sizes."""
    return {"world_size": world.size, "backend": world.backend or None, "batch_size_per_process": batch_per_process,
            "global_batch_size": batch_per_process * world.size}


def wrap(net: torch.nn.Module, world: World, device: str) -> torch.nn.Module:
    """DistributedDataParallel around `net` (batch norm made global first); `net` itself when alone."""
    if not world.distributed:
        return net
    from torch.nn.parallel import DistributedDataParallel

    net = global_batch_norm(net, device)
    ids = [torch.device(device).index] if device.startswith("cuda") else None
    return DistributedDataParallel(net, device_ids=ids)


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    return getattr(net, "module", net)


def epoch_indices(n: int, epoch: int, seed: int, world: World) -> torch.Tensor:
    """This rank's share of a shuffled epoch over positions 0..n-1 (torch's DistributedSampler, set_epoch):
    rank r takes every size-th position of one permutation, so the ranks' k-th batches together are the
    k-th global batch of a single process with the global batch size."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


def share(n: int, world: World) -> slice:
    """This rank's positions in a global batch of n per process x world size (rank r: r*n .. r*n + n - 1)."""
    return slice(world.rank * n, (world.rank + 1) * n)


def sample_generator(seed: int, epoch: int, sample: int) -> torch.Generator:
    """A generator for one sample of one epoch (or step): the same numbers whichever process draws it."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) * 1_000_003 + int(sample))


def sample_rng(seed: int, epoch: int, sample: int):
    """numpy's twin of `sample_generator` (non-negative seed, epoch and sample)."""
    import numpy as np

    return np.random.default_rng([int(seed), int(epoch), int(sample)])


def all_mean(value: float, world: World) -> float:
    """Mean of a number over the ranks (a logged loss)."""
    if not world.distributed:
        return float(value)
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / world.size


def all_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    """Sum of a tensor over the ranks, without gradient (e.g. a loss denominator)."""
    if not world.distributed:
        return t
    import torch.distributed as dist

    t = t.detach().clone()
    dist.all_reduce(t)
    return t


def any_rank(flag: bool, world: World) -> bool:
    """True when any rank says so: every rank stops at the same step (a time budget is per process)."""
    if not world.distributed:
        return bool(flag)
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class _GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics span every rank's batch, through a differentiable all-reduce.
    Hand-written because torch's SyncBatchNorm runs on GPUs only; on GPUs `global_batch_norm` uses torch's."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"batch norm: expected (N, C, ...) input, received shape {tuple(x.shape)}")

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0] + list(range(2, x.dim()))
        c = x.shape[1]
        count = torch.full((1,), float(x.numel() // c), dtype=x.dtype, device=x.device)
        stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1))
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def global_batch_norm(net: torch.nn.Module, device: str) -> torch.nn.Module:
    """Every BatchNorm of `net` with statistics over the global batch (torch's SyncBatchNorm on GPUs)."""
    if device.startswith("cuda"):
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    for name, child in list(net.named_children()):
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) and child.track_running_stats:
            g = _GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine, True)
            g.load_state_dict(child.state_dict())
            setattr(net, name, g.to(next(child.buffers()).device))
        else:
            global_batch_norm(child, device)
    return net


def supports(name: str) -> bool:
    """Whether detector `name`'s trainer runs on several processes (its module sets DISTRIBUTED = True)."""
    from . import _target

    return bool(getattr(importlib.import_module(_target(name)[0]), "DISTRIBUTED", False))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def max_processes(device: str) -> int:
    """The most processes one machine runs: one per GPU on CUDA, one per CPU core otherwise."""
    from ..device import resolve_device

    if resolve_device(device).startswith("cuda"):
        return max(1, torch.cuda.device_count())
    return max(1, os.cpu_count() or 1)


def check_nproc(nproc, name: str, device: str = "auto") -> int:
    """`nproc` as a whole number from 1 to max_processes(device); above 1 only for trainers that support it."""
    most = max_processes(device)
    if isinstance(nproc, bool) or not isinstance(nproc, int) or not 1 <= nproc <= most:
        raise InputError(f"nproc: expected a whole number of processes from 1 to {most} (this machine, device "
                         f"{device!r}), received {nproc!r}")
    if nproc > 1 and not supports(name):
        from . import _TRAINERS

        ok = sorted(n for n in _TRAINERS if supports(n))
        raise InputError(f"nproc: the {name} trainer runs in one process only; --nproc > 1 works for {ok}")
    return nproc


def command(nproc: int, target: list[str]) -> tuple[list[str], dict]:
    """torchrun's command line and environment for `nproc` local processes running `target` (a script and its
    arguments, or "-m" MODULE ...), with the rendezvous on 127.0.0.1."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
           "--local-addr", "127.0.0.1", *target]  # rank 0's address: not the hostname
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    return cmd, env


def launch(nproc: int, argv: list[str], name: str, device: str = "auto") -> int:
    """Run `uad ARGV` (a train command without --nproc) in `nproc` processes through torchrun on this machine
    (rendezvous on 127.0.0.1); returns torchrun's exit status."""
    check_nproc(nproc, name, device)
    cmd, env = command(nproc, ["-m", "uad_label.cli.main", *argv])
    return subprocess.call(cmd, env=env)


def request_argv(name: str, request) -> list[str]:
    """The `uad train` command line of a TrainRequest (its progress callback aside)."""
    import json

    argv = ["train", name, "--config", request.config, "--device", request.device, "--seed", str(request.seed)]
    for d in request.data:
        argv += ["--data", str(d)]
    for k, v in request.overrides.items():
        argv += ["--set", f"{k}={json.dumps(v)}"]
    return argv + (["--out", str(request.out_dir)] if request.out_dir else [])


def run_request(name: str, request) -> dict:
    """Train `name` in `request.nproc` processes: `uad train` in a child torchrun, as `uad train --nproc N` does;
    its output (progress, logs) goes where this process's goes, and rank 0's summary comes back."""
    import json
    import tempfile

    check_nproc(request.nproc, name, request.device)
    with tempfile.TemporaryDirectory(prefix="uad-train-") as tmp:
        summary = os.path.join(tmp, "summary.json")
        rc = launch(request.nproc, [*request_argv(name, request), "--summary", summary], name, request.device)
        if rc != 0 or not os.path.exists(summary):
            raise RuntimeError(f"train {name}: the {request.nproc}-process run failed (torchrun exit status {rc}); "
                               "its errors are in the log above")
        with open(summary, encoding="utf-8") as f:
            return json.load(f)
