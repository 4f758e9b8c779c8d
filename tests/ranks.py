"""Run a function in real processes joined by torch.distributed (gloo, CPU), as DDP ranks are.

    run_ranks(fn, arg1, arg2)   # fn(rank, world_size, arg1, arg2) in 2 spawned processes

`fn` must be importable by name (a module-level function of a module on sys.path). Each process
uses one thread, a free port (MASTER_PORT) and a 60 s collective timeout, so a rank left waiting
in a collective fails the call instead of hanging it; an exception in any rank is raised here.
"""

from __future__ import annotations

import datetime
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, fn, world_size: int, port: int, args: tuple) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT)
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(fn, *args, world_size: int = 2, timeout: float = 180.0) -> None:
    context = mp.start_processes(_rank_main, args=(fn, world_size, free_port(), args), nprocs=world_size,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):  # raises when a rank failed (and ends the others)
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            raise TimeoutError(f"{fn.__name__} on {world_size} ranks still running after {timeout:.0f} s")
