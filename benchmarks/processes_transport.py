"""Gradient transport for the process runtime: shared slot + pipe notice vs a tensor queue.

    .venv/bin/python benchmarks/processes_transport.py

One child process hands ``ROUNDS`` gradients of 200,650 floats (the throughput benchmark's MLP)
to the main process, one at a time: the child sends, the main process takes a private copy and
answers, the child sends the next (the runtime's ping-pong, without any gradient computation).

* **slot**: the child writes into a shared flat slot and sends a tiny tuple on a pipe; the main
  process clones the slot (what :class:`asyncopt.runtimes.common.shared.GradientSlots` does);
* **queue**: the child puts a fresh gradient tensor on a ``torch.multiprocessing`` queue, which
  moves its storage into a new shared-memory segment for every message (file descriptor passing).
"""

from __future__ import annotations

import time

import torch
import torch.multiprocessing as mp
from results import write_section

SIZE, ROUNDS, REPEATS = 200_650, 300, 3


def _slot_child(slot: torch.Tensor, conn) -> None:
    torch.set_num_threads(1)
    grad = torch.randn(SIZE)
    for step in range(ROUNDS):
        slot.copy_(grad)
        conn.send(("grad", step))
        conn.recv()


def _queue_child(queue, conn) -> None:
    torch.set_num_threads(1)
    grad = torch.randn(SIZE)
    for step in range(ROUNDS):
        queue.put((step, grad.clone()))
        conn.recv()


def measure(kind: str) -> float:
    """Best of REPEATS: microseconds per gradient hand-over (round trip included)."""
    context = mp.get_context("spawn")
    best = float("inf")
    for _ in range(REPEATS):
        ours, theirs = context.Pipe()
        if kind == "slot":
            slot = torch.zeros(SIZE).share_memory_()
            child = context.Process(target=_slot_child, args=(slot, theirs), daemon=True)
        else:
            queue = context.Queue()
            child = context.Process(target=_queue_child, args=(queue, theirs), daemon=True)
        child.start()
        start = None
        for step in range(ROUNDS):
            if kind == "slot":
                ours.recv()
                grad = slot.clone()
            else:
                _, grad = queue.get(timeout=60)
                grad = grad.clone()
            if step == 0:
                start = time.perf_counter()  # the first round includes the child's start-up
            ours.send(step)
        best = min(best, (time.perf_counter() - start) / (ROUNDS - 1) * 1e6)
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    return best


def main() -> None:
    torch.set_num_threads(1)
    slot, queue = measure("slot"), measure("queue")
    body = (f"| transport | µs per gradient (round trip) |\n|---|---|\n"
            f"| shared slot + pipe notice | {slot:.0f} |\n| torch.multiprocessing queue | "
            f"{queue:.0f} |\n\n{SIZE:,} float32 (800 KB) per gradient, {ROUNDS} hand-overs, best "
            f"of {REPEATS}; the main process keeps a private copy in both cases. The runtime uses "
            f"the slot.")
    write_section("Process runtime gradient transport",
                  ".venv/bin/python benchmarks/processes_transport.py", body)
    print(body)


if __name__ == "__main__":
    main()
