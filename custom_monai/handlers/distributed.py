"""End of a ``torchrun`` run: every process leaves the process group together."""

from __future__ import annotations

import gc

import torch.distributed as dist

__all__ = ["finalize_distributed"]


def finalize_distributed() -> bool:
    """Barrier, then destroy the default process group; ``False`` when there is none (a one-process run).

    Without the barrier a process that finished first (rank 1 does not save checkpoints or write the
    report) tears gloo down while rank 0 may still have collectives in flight; a process that exits with
    gloo work still referenced can abort at interpreter shutdown ("terminate called without an active
    exception", seen once in a two-process CPU test). ``gc.collect()`` releases finished work objects
    (and the tensors they hold) while the interpreter is still whole.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return False
    dist.barrier()
    dist.destroy_process_group()
    gc.collect()
    return True
