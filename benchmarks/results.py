"""Write one benchmark's figures into its own section of benchmarks/RESULTS.md."""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = ("# Benchmark results\n\n"
          "Every figure here was written by the script named in its section.\n")


def machine() -> str:
    """The machine, and its load average over the last minute (other jobs skew timings)."""
    return (f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"load average {os.getloadavg()[0]:.1f} at the end, its own processes included")


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one torch thread (as the simulator and every worker process do)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def ms_per_call(work: Callable[[], object], seconds: float, warmup: int = 20) -> float:
    """Milliseconds per call of ``work``, timed for ``seconds`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        work()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        work()
        count += 1
    return (time.perf_counter() - start) / count * 1e3


def write_section(name: str, command: str, body: str) -> None:
    """Replace (or add) the section ``name`` of RESULTS.md."""
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    section = (f"<!-- {name} -->\n## {name}\n\n`{command}` — {date.today()}, {machine()}\n\n"
               f"{body.strip()}\n<!-- /{name} -->\n")
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->\n",
                         re.DOTALL)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else (
        text.rstrip("\n") + "\n\n" + section)
    RESULTS.write_text(text)
