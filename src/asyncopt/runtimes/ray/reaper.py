"""Nothing of a private local Ray outlives its driver, even a driver killed by SIGKILL.

Ray ties the processes it starts directly (GCS, raylet, monitor, API server) to the driver
(the kernel kills them when it dies), but the raylet's own children, ``ray::DashboardAgent``
and ``ray::RuntimeEnvAgent``, notice the raylet's death and then wait a minute or more for
the dead GCS before they exit. Every process of a Ray node keeps its log files open in the
node's session directory (``/tmp/ray/session_*``), so that directory names them all; their
command lines and environments do not (Ray retitles its processes, which overwrites both).
asyncopt marks the session of each Ray it starts with a file, ``asyncopt_owner``, holding the
driver's ``pid.start time``, and

* a watchdog, this file run as a script by the driver (``python -I reaper.py RAY_DIR``, in its own
  session: a signal to the driver's process group does not reach it), reads the session
  directory from a pipe and blocks on it; when the pipe closes (the driver is gone, however it
  ended, or :func:`asyncopt.runtimes.ray.local.private_ray` closed it after ``ray.shutdown``)
  it kills every process with a file open in that directory, then exits;
* the next private Ray started on the machine does the same for every marked session whose
  driver is dead (:func:`sweep`), in case a watchdog was killed too.

Only sessions that asyncopt marked are ever touched: never a Ray someone else started.
Standard library only, so the watchdog starts in milliseconds without torch or Ray.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

MARK = "asyncopt_owner"


def owner_id(pid: int) -> str | None:
    """``pid.start time`` of a live process (its start time tells a reused pid apart)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return f"{pid}.{int(fields[19])}"  # field 22 of proc(5), counted after the name


def holders(session: str, ray_dir: str, spare: int) -> list[int]:
    """Ray's processes (Python or a binary of the Ray package ``ray_dir``; never ``spare``,
    the driver, nor this process) with a file open under ``session``."""
    prefix, found = session.rstrip("/") + "/", []
    ours = (os.path.realpath(sys.executable), os.path.realpath(ray_dir) + "/")
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (os.getpid(), spare):
            continue
        with contextlib.suppress(OSError):  # gone, or not ours to read
            exe = os.readlink(f"/proc/{entry}/exe")
            if exe != ours[0] and not exe.startswith(ours[1]):
                continue
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}").startswith(prefix):
                        found.append(int(entry))
                        break
    return found


def clear(session: str, ray_dir: str, spare: int = 0) -> None:
    """Kill what is left of a marked session (a few passes: a process being spawned at that
    moment is caught by the next), and unmark it."""
    for _ in range(3):
        left = holders(session, ray_dir, spare)
        for pid in left:
            with contextlib.suppress(OSError):  # gone already
                os.kill(pid, signal.SIGKILL)
        if not left:
            break
        time.sleep(0.2)
    with contextlib.suppress(OSError):
        (Path(session) / MARK).unlink()


def sweep(ray_dir: str) -> None:
    """Clear every marked session whose driver is no longer alive."""
    root = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
    for mark in root.glob(f"session_*/{MARK}"):
        with contextlib.suppress(OSError):
            owner = mark.read_text().strip()
            pid = owner.split(".")[0]
            if pid.isdigit() and owner_id(int(pid)) != owner:
                clear(str(mark.parent), ray_dir)


def main(ray_dir: str) -> None:
    """Read the session directory, wait until the driver's end of the pipe closes, clear
    (sparing the driver if it is still alive: it closed the pipe after ``ray.shutdown``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the driver's to handle
    driver = os.getppid()
    session = sys.stdin.readline().strip()
    while sys.stdin.read(4096):
        pass
    if session:
        clear(session, ray_dir, spare=driver)


if __name__ == "__main__":
    main(sys.argv[1])
