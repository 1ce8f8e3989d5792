"""The lock-free AMSGrad race, forced deterministically, and the bound that contains it.

Lock-free workers share the rule's m and v without a lock. A worker's step writes m first and v
after; a second worker that reads m between the two sees the first worker's gradient in m while
v still lacks it. Where only the first worker's gradient is nonzero (v = 0 there), the second
worker's direction m / (√v̂ + ε) is then m/ε: with ε = 1e-8 a step of about 10⁶ × lr, the
blow-up seen once in 17 lock-free quickstart runs. Here the interleaving is made by hand, with
the rule's own step code, in one process.
"""

from __future__ import annotations

import torch

from asyncopt import rules
from asyncopt.rules.fused import part
from asyncopt.rules.transforms import AdamState, amsgrad_direction, moment_ratio_bound

B1, B2, LR = 0.9, 0.999, 1e-3


def test_a_step_that_reads_another_workers_fresh_m_while_v_is_zero_stays_bounded():
    rule = rules.amsgrad(lr=LR, b1=B1, b2=B2, bias_correction=True)  # the quickstart's APAM
    params = {"w": torch.zeros(2)}
    state = rule.init(params)
    moments = part(state, AdamState)
    # worker A has begun its step: its first write (m ← b1 m + (1 − b1) g_A) is in, v not yet
    grad_a = {"w": torch.tensor([1.0, 0.0])}
    torch._foreach_lerp_([moments.mu["w"]], [grad_a["w"]], 1 - B1)
    # worker B steps now with a gradient that is zero where A's is not
    assert rule.step({"w": torch.tensor([0.0, 1.0])}, state, params, delay=0, worker=1)
    bound = moment_ratio_bound(B1, B2)
    assert bound is not None
    k1 = (1 - B2) ** 0.5 / (1 - B1)  # the bias correction at k = 1
    step = params["w"].abs()
    # clamped at the bound (float32 rounding aside); unbounded, the step was 2846
    assert float(step[0]) <= LR * k1 * bound * (1 + 1e-6)
    assert torch.allclose(step[1], torch.tensor(LR * k1 * 0.1 / (0.001**0.5 + 1e-8)))


def test_the_bound_never_clips_a_step_of_the_sequential_algorithm():
    """Gradients one after another, of magnitudes over 24 orders and shrinking geometrically
    (the sequences that come closest to the bound): the ratio stays under it, so the clamp
    changes no sequential step."""
    generator = torch.Generator().manual_seed(0)
    for b1, b2 in ((0.9, 0.999), (0.5, 0.3), (0.1, 0.99), (0.95, 0.91)):
        bound = moment_ratio_bound(b1, b2)
        assert bound is not None
        for kind in ("random", "geometric"):
            mu, nu = torch.zeros(64, dtype=torch.float64), torch.zeros(64, dtype=torch.float64)
            for t in range(200):
                if kind == "random":
                    g = torch.randn(64, generator=generator, dtype=torch.float64) * 10.0 ** (
                        torch.randint(-12, 12, (64,), generator=generator).double())
                else:  # |g_i| ∝ (b2/b1)^i: Cauchy–Schwarz's equality case
                    g = torch.full((64,), (b2 / b1) ** t, dtype=torch.float64)
                mu.lerp_(g, 1 - b1)
                nu.mul_(b2).addcmul_(g, g, value=1 - b2)
                ratio = (mu.abs() / nu.sqrt()).nan_to_num(0.0)
                assert float(ratio.max()) <= bound, (b1, b2, kind, t)
    assert moment_ratio_bound(0.99, 0.9) is None  # b1² ≥ b2: Adam's ratio has no bound


def test_amsgrad_direction_is_the_unclamped_one_on_a_sequential_run():
    """The functional path and the fused step share amsgrad_direction: on one process, 100
    steps give the ratio m/(√v̂ + ε) exactly (the clamp is a no-op)."""
    generator = torch.Generator().manual_seed(1)
    rule = rules.amsgrad(lr=LR, bias_correction=True)
    params = {"w": torch.randn(32, generator=generator)}
    moments = part(rule.init(params), AdamState)
    for _ in range(100):
        g = {"w": torch.randn(32, generator=generator) * 100}
        (direction,) = amsgrad_direction(g, moments, B1, B2, 1e-8, False)
        expected = moments.mu["w"] / (moments.nu_max["w"].sqrt() + 1e-8)
        assert torch.equal(direction, expected)
