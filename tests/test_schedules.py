"""Noise schedules: properties every registered schedule has, and the formulas of the built-ins."""

from __future__ import annotations

import math

import pytest
import torch

from ddpmctl import registry
from ddpmctl.errors import OptionsError
from ddpmctl.schedules import cosine, sigmoid

SCHEDULES = registry.names("schedule")


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", [10, 1000])
def test_every_schedule_is_a_valid_diffusion(name, T):
    s = registry.build("schedule", name, {"T": T})
    a = s.alpha_bar
    assert s.T == T and a.dtype == torch.float64
    assert bool((a > 0).all() and (a < 1).all() and (a.diff() < 0).all())  # decreasing in (0, 1)
    assert bool((s.beta > 0).all() and (s.beta < 1).all())
    assert bool((s.beta_tilde <= s.beta + 1e-15).all()) and float(s.beta_tilde[0]) == 0.0  # DDPM eq. 7
    assert bool((s.sigma.diff() > 0).all() and (s.log_snr.diff() < 0).all())
    assert bool(torch.isfinite(s.log_beta_tilde_clipped).all())
    torch.testing.assert_close(torch.cumprod(s.alpha, 0), a)


@pytest.mark.parametrize("make", [cosine, sigmoid])
def test_cosine_and_sigmoid_go_from_data_to_noise(make):
    s = make(T=1000)
    assert float(s.alpha_bar[0]) > 0.999  # almost no noise at t = 1
    assert float(s.alpha_bar[-1]) < 1e-5  # almost pure noise at t = T
    assert float(s.beta.max()) <= 0.999  # the clip at t = T


def test_sigmoid_is_chen_2023_algorithm_1():
    start, end, tau, T = -3.0, 3.0, 0.7, 50
    s = sigmoid(T=T, start=start, end=end, tau=tau)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731

    def gamma(t):  # Chen 2023, Algorithm 1
        v_start, v_end = sig(start / tau), sig(end / tau)
        return (v_end - sig((t * (end - start) + start) / tau)) / (v_end - v_start)

    for i in (0, 10, 25, 48):  # index i is t = (i + 1) / T; the last is clipped
        assert float(s.alpha_bar[i]) == pytest.approx(gamma((i + 1) / T), rel=1e-9)


def test_sigmoid_options_are_checked():
    with pytest.raises(OptionsError, match="start"):
        registry.validate_options("schedule", "sigmoid", {"start": 3, "end": -3})
    with pytest.raises(OptionsError, match="tau"):
        registry.validate_options("schedule", "sigmoid", {"tau": 0})


def test_respacing_keeps_alpha_bar_at_the_chosen_steps():
    s = cosine(T=100)
    taus = torch.tensor([0, 9, 49, 99])
    r = s.respace(taus)
    torch.testing.assert_close(r.alpha_bar, s.alpha_bar[taus])
    torch.testing.assert_close(torch.cumprod(1 - r.beta, 0), r.alpha_bar)  # N&D eq. 19
