"""benchmarks/cost_model.py's arithmetic on made-up sweeps whose answers are known."""

import pytest

import cost_model


def test_interpolation_is_exact_on_power_laws_and_linear_past_the_ends():
    points = {64: 10.0, 256: 40.0, 1024: 160.0}  # ms linear in batch
    assert cost_model.interpolate(points, 128) == pytest.approx(20.0)
    assert cost_model.interpolate(points, 2048) == pytest.approx(320.0)
    assert cost_model.interpolate(points, 32) == pytest.approx(5.0)
    flat = {64: 30.0, 512: 30.0}  # host-bound: the same time at any batch
    assert cost_model.interpolate(flat, 128) == pytest.approx(30.0)


def test_ring_allreduce_time():
    assert cost_model.allreduce_s(1, 1e9, 1e9, 1e-5) == 0
    assert cost_model.allreduce_s(4, 1e9, 1e9, 1e-5) == pytest.approx(2 * 3 / 4 + 6e-5)


def test_speedup_is_n_for_compute_linear_in_batch_and_free_communication():
    linear = {64: 8.0, 512: 64.0, 4096: 512.0}
    s = cost_model.speedups(linear, [1, 2, 8], 4096, 0, 0, 3, (1e30, 0.0))
    assert s == pytest.approx({1: 1.0, 2: 2.0, 8: 8.0})


def test_a_host_bound_step_does_not_scale():
    host_bound = {64: 50.0, 512: 50.0}  # the same 50 ms whatever the batch: the host issues the kernels
    s = cost_model.speedups(host_bound, [1, 8], 512, 0, 0, 3, (1e30, 0.0))
    assert s[8] == pytest.approx(1.0)


def test_communication_caps_the_speedup():
    linear = {64: 8.0, 512: 64.0}
    critic, generator = 11e6 * 4, 13e6 * 4  # the seed model's sizes, about
    s = cost_model.speedups(linear, [8], 512, critic, generator, 3, cost_model.LINKS["100 Gb/s"])
    reduces = 3 * cost_model.allreduce_s(8, critic, 12.5e9, 1e-5) + cost_model.allreduce_s(8, generator, 12.5e9, 1e-5)
    assert s[8] == pytest.approx(0.064 / (0.008 + reduces))
