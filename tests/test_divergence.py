"""The divergence checks (asyncopt.runtimes.divergence), each on its own."""

import math

import torch

from asyncopt.runtimes.divergence import Divergence


def params(value: float = 1.0) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor([value, -2.0 * value])}


def test_a_non_finite_loss_with_finite_parameters_blames_the_model_not_the_step_size():
    why = Divergence(4).evaluation(math.nan, params(), version=7)
    assert why.startswith("the loss became nan at version 7 although every parameter")
    assert "rule.lr" not in why


def test_a_non_finite_loss_with_non_finite_parameters_blames_the_step_size():
    why = Divergence(4).evaluation(math.inf, params(math.inf), version=3)
    assert why == "the loss became inf at version 3; lower the step size (rule.lr)"
    # a nan after finite parameters is seen too (max() alone would drop it)
    mixed = {"a": torch.tensor([1.0]), "b": torch.tensor([math.nan, 2.0])}
    why = Divergence(4).evaluation(math.nan, mixed, version=3)
    assert why == "the loss became nan at version 3; lower the step size (rule.lr)"


def test_a_non_finite_loss_with_huge_finite_parameters_blames_the_step_size():
    # a tuning run ended so: IA²SGD at lr 0.2, weights near 2e19, finite, yet the loss NaN
    why = Divergence(4).evaluation(math.nan, params(2e19), version=5)
    assert why == ("the loss became nan at version 5 (a parameter is 4e+19 in magnitude); "
                   "lower the step size (rule.lr)")
    assert Divergence(4).evaluation(math.nan, params(1e7), version=5).startswith(
        "the loss became nan at version 5 although every parameter")


def test_the_loss_may_grow_to_factor_times_its_initial_value_and_no_further():
    divergence = Divergence(4, factor=100.0)
    divergence.initial_loss = 2.0
    assert divergence.evaluation(200.0, params(), version=1) is None
    why = divergence.evaluation(200.5, params(), version=2)
    assert "grew to 200.5, more than 100× its initial value 2" in why


def test_before_the_first_evaluation_only_non_finite_losses_stop():
    assert Divergence(4).evaluation(1e30, params(), version=0) is None  # initial loss NaN


def test_everyone_rejected_in_a_row_stops_at_max_100_or_10n():
    divergence = Divergence(20)  # 10 n = 200 > 100
    whys = [divergence.arrival(k % 20, True, params()) for k in range(200)]
    assert whys[:199] == [None] * 199
    assert whys[199] == ("the last 200 gradients were all NaN or Inf; lower the step "
                         "size (rule.lr)")


def test_one_worker_rejected_100_times_while_the_others_are_fine_stops_and_names_it():
    divergence = Divergence(2)
    for _ in range(99):
        assert divergence.arrival(1, True, params(3.0)) is None
        assert divergence.arrival(0, False, params(3.0)) is None
    why = divergence.arrival(1, True, params(3.0))
    assert why.startswith("worker 1 sent 100 NaN/Inf gradients in a row")
    assert "the largest parameter is 6 in magnitude" in why


def test_an_accepted_gradient_ends_its_workers_streak():
    divergence = Divergence(2)
    for _ in range(99):
        divergence.arrival(1, True, params())
    assert divergence.watches(False)  # a streak is open: every arrival is looked at
    divergence.arrival(1, False, params())
    assert not divergence.watches(False)
    assert all(divergence.arrival(1, True, params()) is None for _ in range(99))
