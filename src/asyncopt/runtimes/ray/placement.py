"""The worker actors' CPUs, reserved at once: a run starts with every worker placed, or not.

One placement group of ``workers`` bundles of ``{"CPU": worker_cpus}`` (Ray's gang
reservation: all bundles or none), strategy ``PACK`` for ``placement = "default"`` and
``SPREAD`` for ``"spread"``; worker ``i`` is created in bundle ``i``, and Ray restarts a dead
worker actor in its own bundle, so a restart never waits for CPUs that another run took. On a
cluster the reservation waits up to ``startup_timeout`` (an autoscaler may add nodes) and
then fails with the shortfall; a private local Ray was sized for the workers
(:func:`~asyncopt.runtimes.ray.local.check_fits`) and places them at once. The group ends with
the run: with the Ray job when the run disconnects, or removed by hand in a Ray session that the
caller opened and keeps. Block server actors (``num_cpus = 0``) need no reservation.
"""

from __future__ import annotations

import contextlib
from typing import Any

from asyncopt.errors import ConfigError

STRATEGIES = {"default": "PACK", "spread": "SPREAD"}


class Reservation:
    """A placement group for ``workers`` actors of ``cpus`` CPUs each."""

    def __init__(self, ray: Any, workers: int, cpus: float, placement: str) -> None:
        self.ray, self.workers, self.cpus = ray, workers, cpus
        self.group = ray.util.placement_group([{"CPU": cpus}] * workers,
                                              strategy=STRATEGIES[placement])

    def wait(self, timeout: float) -> None:
        """Until every bundle is placed; a ConfigError with the shortfall after ``timeout``."""
        if self.group.wait(timeout_seconds=timeout):
            return
        total = self.ray.cluster_resources().get("CPU", 0.0)
        free = self.ray.available_resources().get("CPU", 0.0)
        need = self.workers * self.cpus
        self.remove()
        raise ConfigError(
            "workers", self.workers,
            f"as many worker actors as the Ray cluster can place within "
            f"runtime_options.startup_timeout = {timeout:g} s: they need {need:g} CPUs "
            f"({self.workers} × runtime_options.worker_cpus = {self.cpus:g}) and the cluster "
            f"has {total:g} CPUs, {free:g} of them free (short by {max(need - free, 0.0):g}; "
            f"at most {int(total // self.cpus)} such workers fit)")

    def strategy(self, worker: int) -> Any:
        """The scheduling strategy of worker actor ``worker``: its bundle."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=worker)

    def remove(self) -> None:
        """Give the CPUs back; a group whose cluster is going away (a signal sent to the whole
        process group reaches a private Ray's processes too) goes with it."""
        group, self.group = self.group, None
        if group is not None:
            with contextlib.suppress(Exception):  # Ray's RpcError kinds once its GCS is gone
                self.ray.util.remove_placement_group(group)
