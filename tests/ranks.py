"""Two real torch.distributed ranks for a test: spawned processes that meet over a FileStore."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_two_ranks(target: Callable[..., None], store: Path, *args: Any,
                  timeout: float = 120) -> dict[int, tuple[Any, ...]]:
    """Run `target(rank, str(store), *args, out)` in two spawned processes; each puts one
    `(rank, *result)` on the queue `out`. Returns {rank: result}; both processes are joined, or
    killed if they outlive the results by 30 s."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(rank, str(store), *args, out)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    try:
        results = {}
        for _ in procs:
            rank, *rest = out.get(timeout=timeout)
            results[rank] = tuple(rest)
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    return results
