"""What both torchrun test workers do around their own computation (gloo, 2 processes)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import numpy as np
import torch.distributed as dist

Arrays = dict[str, np.ndarray]


def run_on_ranks(compute: Callable[[int], Arrays], rank0_extra: Callable[[Arrays], Arrays]) -> None:
    """Run ``compute(rank)`` on every rank; rank 0 saves its arrays and ``rank0_extra(rank 1's)``.

    The arrays go to the ``.npz`` path given as the script's first argument. The process then
    leaves with ``os._exit(0)``: torch 2.14's gloo/store threads often aborted the interpreter's
    shutdown ("terminate called without an active exception") after all the work was done and
    written, failing the test at random.
    """
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result = compute(rank)
    gathered = [None, None]
    dist.all_gather_object(gathered, {k: v.tolist() for k, v in result.items()})
    if rank == 0:
        other = {k: np.array(v) for k, v in gathered[1].items()}
        np.savez(sys.argv[1], **result, **rank0_extra(other))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
