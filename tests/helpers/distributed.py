"""Run a test body in W real processes joined by a gloo process group (CPU)."""

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, world: int, port: int, body, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    body(rank, world, *args)
    dist.barrier()  # no rank tears its group down while another still talks to it
    dist.destroy_process_group()
    # skip the interpreter's teardown: a gloo thread still joinable at static destruction aborts the
    # process now and then ("terminate called without an active exception") after the body passed
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(body, *args, world: int = 2) -> None:
    """Call ``body(rank, world, *args)`` in ``world`` spawned processes; a failure in any rank fails
    the caller with that rank's traceback. ``body`` must be a module-level function."""
    mp.spawn(_entry, args=(world, free_port(), body, args), nprocs=world, join=True)
