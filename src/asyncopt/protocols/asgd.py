"""Asynchronous SGD: the server steps on every arrival.

    x_{k+1} = x_k + rule(g_i(x_{k-δ}); δ, i)           and worker i restarts at x_{k+1}

With ``rule = sgd`` this is vanilla ASGD (Lian et al. 2015; Agarwal & Duchi 2011). With a momentum
rule it is Async-MSGD (Liu et al. 2018): the momentum buffer lives on the server, so it combines the
server's latest iterates with a δ-stale gradient. With ``rule = amsgrad`` it is APAM (Xu et al.,
Algorithm 1: one master step per received gradient). With ``delay_adaptive = true`` on the rule
it is delay-adaptive ASGD (γ·n/max(n, δ); Mishchenko et al. 2022, Koloskova et al. 2022), and with
``max_delay = R − 1`` it is Ringmaster ASGD without calculation stops (Maranjyan et al. 2025).
"""

from __future__ import annotations

from asyncopt.protocols.base import Action, Arrival, Protocol, Reply


class ASGD(Protocol):
    """Step on every arrival; the sender restarts at the new model."""

    name = "asgd"
    needs_server = False  # each arrival is one step: lock-free workers and block servers run it

    def receive(self, arrival: Arrival, delay: int) -> Reply:
        stepped = self.server.step(arrival.grads, delay=delay, worker=arrival.worker)
        return Reply(Action.STEP if stepped else Action.DROP, start=(arrival.worker,), delay=delay)
