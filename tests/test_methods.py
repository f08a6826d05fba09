"""Few-step methods (methods.py) and the few-step sampler: their losses at the closed-form
solutions for Gaussian data N(m, s^2 I), their curricula, and sampling with them."""

from __future__ import annotations

import math

import pytest
import torch

from ddpmctl import registry
from ddpmctl.denoiser import Denoiser, Prediction
from ddpmctl.methods import Consistency, ConsistencyLoss, MeanFlow, MeanFlowLoss
from ddpmctl.processes import C_NOISE_SCALE, EDM, Flow

M, S = 0.5, 0.3  # Gaussian data N(M, S^2 I)


# -- closed forms on EDM's scaled state x = x_0 + sigma eps ----------------------------------------

def exact_denoiser(x, sigma):
    """E[x_0 | x] = m + s^2 / (s^2 + sigma^2) (x - m)."""
    return M + S**2 / (S**2 + sigma**2) * (x - M)


def exact_consistency(x, sigma):
    """The probability-flow ODE keeps (x - m) / sqrt(s^2 + sigma^2): f(x, sigma) = m + s / sqrt(s^2 + sigma^2) (x - m)."""
    return M + S / (S**2 + sigma**2).sqrt() * (x - M)


class EDMNet(torch.nn.Module):
    """A 'network' of the EDM process whose x0_hat is ``f(x, sigma)``: F = (f - c_skip x) / c_out."""

    def __init__(self, process: EDM, f):
        super().__init__()
        self.process, self.f = process, f
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x_in, c_noise, y=None):
        sigma = (c_noise.double() * 4 / C_NOISE_SCALE).exp()
        c_skip, c_out, c_in, _ = self.process.coefficients(sigma)
        col = lambda v: v.reshape(-1, *([1] * (x_in.ndim - 1)))  # noqa: E731
        x = x_in.double() / col(c_in)
        return ((self.f(x, col(sigma)) - col(c_skip) * x) / col(c_out)).float()


class ExactTeacher:
    """The exact denoiser as a teacher (Denoiser's call signature)."""

    def __call__(self, x, sigma, y=None):
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, *([1] * (x.ndim - 1)))
        x0 = exact_denoiser(x.double(), sigma).to(x.dtype)
        return Prediction((x - x0) / sigma, x0)


def consistency_loss(f, stage: int, target="teacher", n=4096):
    process = EDM(sigma_data=0.5)
    method = Consistency(target=target, stages=16)
    loss = ConsistencyLoss(method, process, 0.0, 0, ExactTeacher(), steps=16)
    loss.set_step(stage)
    x0 = M + S * torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return float(loss(EDMNet(process, f), x0.float(), None, torch.Generator().manual_seed(1)))


def test_consistency_distillation_loss_vanishes_for_the_exact_consistency_function():
    """With the exact teacher, the exact f(x, sigma) is consistent along every Heun step (to the
    step's own error), where the denoiser E[x_0 | x], which is not a consistency function, is far off."""
    exact = consistency_loss(exact_consistency, stage=8)
    wrong = consistency_loss(exact_denoiser, stage=8)
    assert exact < 1e-3 * wrong, (exact, wrong)
    # It falls as the gap sigma - r halves each stage (the share of pairs whose target is the
    # teacher's x0_hat, at r = 0, and Heun's error), down to float32's floor by stage 8 or so.
    assert consistency_loss(exact_consistency, stage=3) > 10 * consistency_loss(exact_consistency, stage=6)
    # At stage 0 every target is the teacher's x0_hat: distillation starts at the teacher's denoiser.
    assert consistency_loss(exact_denoiser, stage=0) < 1e-5


def test_consistency_curriculum_starts_at_the_denoising_loss_and_closes_the_gap():
    process = EDM(sigma_data=0.5)
    loss = ConsistencyLoss(Consistency(stages=4), process, 0.0, 0, None, steps=400)
    g = torch.Generator().manual_seed(0)
    loss.set_step(0)
    sigma, r = loss.levels(5000, "cpu", g)
    assert bool((r == 0).all()), "stage 0: r <= 0 everywhere, the target is x_0 (the diffusion loss)"
    gaps = []
    for step in (100, 200, 399):
        loss.set_step(step)
        sigma, r = loss.levels(5000, "cpu", torch.Generator().manual_seed(0))
        assert bool((r < sigma).all() and (r >= 0).all())
        high = sigma > 10  # where n(sigma) = 1 + k sigmoid(-b sigma) is 1: the gap is q^-stage sigma
        gaps.append(((sigma - r) / sigma)[high])
    for stage, gap in enumerate(gaps, start=1):
        torch.testing.assert_close(gap, torch.full_like(gap, 2.0**-stage), rtol=1e-3, atol=0)
    low = sigma < 0.5  # at low noise the gap is wider (ECT's n(sigma)), up to 1 + k / 2 times
    assert bool((((sigma - r) / sigma)[low & (r > 0)] > 1.5 * 2.0**-3).all())
    loss.set_step(10_000)
    assert loss.stage == 3, "the last stage lasts to the end"


def test_consistency_training_target_at_stage_0_is_the_data():
    process = EDM(sigma_data=0.5)
    loss = ConsistencyLoss(Consistency(target="data"), process, 0.0, 0, None, steps=100)
    x0 = torch.randn(64, 2)
    eps = torch.randn(64, 2)
    sigma = torch.full((64,), 2.0, dtype=torch.float64)
    target = loss.target(EDMNet(process, exact_consistency), x0, x0 + 2 * eps, eps, sigma, torch.zeros(64, dtype=torch.float64), None)
    assert torch.equal(target, x0)


def test_consistency_distillation_needs_a_teacher():
    with pytest.raises(ValueError, match="teacher"):
        Consistency(target="teacher").loss(EDM(), 0.0, 0, None, 10)


# -- MeanFlow: the average velocity of the flow process z_t = (1 - t) x_0 + t eps -------------------

def spread(t):
    """Standard deviation of z_t: sqrt((1 - t)^2 s^2 + t^2)."""
    return ((1 - t) ** 2 * S**2 + t**2).sqrt()


def exact_average_velocity(z, r, t):
    """The flow keeps (z - (1 - t) m) / spread(t): z_r = (1 - r) m + (z_t - (1 - t) m) spread(r) / spread(t),
    u = (z_t - z_r) / (t - r); at r = t, the velocity dz/dt."""
    ds = ((1 - t) * -(S**2) + t) / spread(t)  # d spread / dt
    v = -M + (z - (1 - t) * M) * ds / spread(t)
    gap = t - r
    safe = torch.where(gap > 1e-4, gap, torch.ones_like(gap))
    z_r = (1 - r) * M + (z - (1 - t) * M) * spread(r) / spread(t)
    return torch.where(gap > 1e-4, (z - z_r) / safe, v)


class AverageVelocityNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dtype = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))  # what the Denoiser feeds it

    def forward(self, z, c, y=None):
        t = (c[:, 0] / C_NOISE_SCALE).reshape(-1, 1)
        r = t - (c[:, 1] / C_NOISE_SCALE).reshape(-1, 1)
        return exact_average_velocity(z, r, t)


def meanflow_batch(n=20000, seed=0):
    g = torch.Generator().manual_seed(seed)
    loss = MeanFlowLoss(MeanFlow(r_fraction=1.0), Flow(), 0.0, 0)
    t, r = loss.times(n, "cpu", g)
    x0 = M + S * torch.randn(n, 1, generator=g)
    eps = torch.randn(n, 1, generator=g)
    z = (1 - t.float()[:, None]) * x0 + t.float()[:, None] * eps
    return loss, z, t, r, x0, eps


def test_meanflow_target_is_the_exact_average_velocity_given_the_marginal_velocity():
    """The MeanFlow identity u = v - (t - r) du/dt: with the marginal velocity v(z_t, t) and the
    exact u, the target is u itself and the loss vanishes."""
    loss, z, t, r, _, _ = meanflow_batch()
    tc = t.float()[:, None]
    v = exact_average_velocity(z, tc, tc)  # r = t: the velocity field
    u, target = loss.pair(AverageVelocityNet(), z, t, r, v, None)
    assert bool((t - r > 1e-3).float().mean() > 0.9)
    assert torch.allclose(u, target, atol=1e-3), float((u - target).abs().max())
    wrong, target = loss.pair(AverageVelocityNet(), z, t, r, exact_average_velocity(z, tc, tc) * 1.1, None)
    assert float((wrong - target).abs().max()) > 3e-2


def test_meanflow_target_with_the_per_example_velocity_is_unbiased_for_the_exact_solution():
    """Training uses v = eps - x_0; its target averages to u over the examples that share z_t, so
    the exact u is where the loss's gradient vanishes: E[target - u] = 0 and E[(target - u) z] = 0."""
    loss, z, t, r, x0, eps = meanflow_batch(200_000)
    u, target = loss.pair(AverageVelocityNet(), z, t, r, eps - x0, None)
    d = (target - u).double()
    assert abs(float(d.mean())) < 4 * float(d.std()) / math.sqrt(len(d)), float(d.mean())
    dz = d * (z.double() - z.double().mean())
    assert abs(float(dz.mean())) < 4 * float(dz.std()) / math.sqrt(len(d)), float(dz.mean())
    # A wrong u is biased: the check can fail.
    d_wrong = (target - 1.1 * u).double()
    assert abs(float(d_wrong.mean())) > 10 * float(d_wrong.std()) / math.sqrt(len(d))


def test_meanflow_times_are_ordered_and_a_fraction_has_r_below_t():
    loss = MeanFlowLoss(MeanFlow(r_fraction=0.25), Flow(), 0.0, 0)
    t, r = loss.times(40_000, "cpu", torch.Generator().manual_seed(0))
    assert bool((t >= r).all())
    assert abs(float((t > r).float().mean()) - 0.25) < 0.01


def test_meanflow_is_refused_on_another_process():
    with pytest.raises(ValueError, match="flow"):
        MeanFlow().loss(EDM(), 0.0, 0, None, 10)


# -- the few-step sampler --------------------------------------------------------------------------

class ConsistencyDenoiser(ExactTeacher):
    """The exact consistency function of EDM's process, as a denoiser of the few-step sampler."""

    process = EDM()
    few_step = {"gamma": 1.0}

    def __call__(self, x, sigma, y=None, sigma_next=None):
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, *([1] * (x.ndim - 1)))
        x0 = exact_consistency(x, s)
        return Prediction((x - x0) / s, x0)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_one_step_of_the_exact_consistency_function_samples_the_data(steps):
    fn, opts = registry.resolve("sampler", "few-step", None)
    x_T = torch.randn(100_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0, nfe = fn(ConsistencyDenoiser(), x_T, steps, torch.Generator().manual_seed(1), None, None, **opts.model_dump())
    assert nfe == steps
    assert abs(float(x0.mean()) - M) < 0.01 and abs(float(x0.std()) / S - 1) < 0.01, (float(x0.mean()), float(x0.std()))


def test_two_steps_of_the_exact_average_velocity_are_its_ode_solution():
    """A MeanFlow model jumps along the ODE: 1, 2 or 4 deterministic jumps end at the same points."""
    process = Flow(t_max=0.999)
    net = AverageVelocityNet()
    method = MeanFlow()
    den = Denoiser(net, process, second_noise=lambda s, s_next: method.second_noise(process, s, s_next))
    fn, opts = registry.resolve("sampler", "few-step", None)
    x_T = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ends = [fn(den, x_T.clone(), k, torch.Generator().manual_seed(1), None, None, **opts.model_dump())[0] for k in (1, 2, 4)]
    assert torch.allclose(ends[0], ends[1], atol=1e-4) and torch.allclose(ends[0], ends[2], atol=1e-4)
    assert abs(float(ends[0].mean()) - M) < 0.02 and abs(float(ends[0].std()) / S - 1) < 0.02


def test_few_step_levels_are_checked():
    fn, opts = registry.resolve("sampler", "few-step", {"sigmas": [5.0, 9.0]})
    with pytest.raises(ValueError, match="decreasing"):
        fn(ConsistencyDenoiser(), torch.randn(4, 1), 3, None, None, None, **opts.model_dump())
