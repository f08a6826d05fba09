"""Properties of the diffusion core: schedules, the forward process, the posterior, the loss."""

import math

import pytest
import torch

from ddpmctl.denoiser import Denoiser, to_eps_x0
from ddpmctl.diffusion import DiffusionLoss, eps_x0_from_output, min_snr_weight, q_posterior, q_sample, target
from ddpmctl.samplers.ddpm import ddpm
from ddpmctl.schedules import cosine, linear


def test_linear_schedule_matches_ho_et_al():
    s = linear()
    assert s.T == 1000 and s.alpha_bar.dtype == torch.float64
    assert s.beta[0].item() == pytest.approx(1e-4) and s.beta[-1].item() == pytest.approx(0.02)
    # alpha_bar_T is tiny: x_T is (almost) pure noise.
    assert s.alpha_bar[-1].item() < 1e-4
    # T is configurable; the betas are rescaled so alpha_bar_T stays comparable.
    s100 = linear(T=100)
    assert s100.T == 100 and s100.alpha_bar[-1].item() < 1e-3


def test_cosine_schedule_is_the_formula():
    T, s = 1000, 0.008
    sched = cosine(T=T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):  # index t is the paper's t + 1; unclipped away from t = T
        assert sched.alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert (sched.beta <= 0.999).all()


@pytest.mark.parametrize("make", [linear, cosine])
def test_derived_quantities_are_consistent(make):
    s = make()
    assert torch.allclose(torch.cumprod(1 - s.beta, 0), s.alpha_bar)
    assert (s.beta_tilde <= s.beta + 1e-15).all() and (s.beta_tilde >= 0).all()
    assert torch.allclose(s.sigma**2, (1 - s.alpha_bar) / s.alpha_bar)
    assert torch.allclose(s.log_snr, torch.log(s.alpha_bar / (1 - s.alpha_bar)))


def test_forward_process_matches_its_closed_form_marginal():
    """x_t from q_sample has mean sqrt(a) x0 and variance 1 - a, for every t."""
    s = linear()
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([[1.5, -0.5]], dtype=torch.float64).expand(200_000, 2)
    for t in (0, 99, 499, 999):
        tt = torch.full((x0.shape[0],), t)
        x_t = q_sample(s, x0, tt, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        a = s.alpha_bar[t].item()
        assert torch.allclose(x_t.mean(0), math.sqrt(a) * x0[0], atol=0.01)
        assert torch.allclose(x_t.var(0), torch.full((2,), 1 - a, dtype=torch.float64), rtol=0.02, atol=1e-4)


def test_forward_process_composes_step_by_step():
    """Applying q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t) t times gives q(x_t | x_0)."""
    s = linear(T=50)
    g = torch.Generator().manual_seed(1)
    x = torch.full((100_000, 1), 2.0, dtype=torch.float64)
    for t in range(s.T):
        x = s.alpha[t].sqrt() * x + s.beta[t].sqrt() * torch.randn(x.shape, generator=g, dtype=torch.float64)
    a = s.alpha_bar[-1].item()
    assert x.mean().item() == pytest.approx(2.0 * math.sqrt(a), abs=0.01)
    assert x.var().item() == pytest.approx(1 - a, rel=0.02)


def test_posterior_is_bayes_rule():
    """q(x_{t-1} | x_t, x_0) from DDPM eq. 7 equals gaussian conditioning of the joint."""
    s = linear(T=200)
    x0, x_t = torch.tensor([[0.7]], dtype=torch.float64), torch.tensor([[-0.3]], dtype=torch.float64)
    for t in (1, 50, 199):
        mean, var = q_posterior(s, x0, x_t, torch.tensor([t]))
        # Joint of (x_{t-1}, x_t) given x_0: x_{t-1} ~ N(sqrt(ab_prev) x0, 1 - ab_prev),
        # x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) z.
        ab_prev, alpha, beta = s.alpha_bar_prev[t], s.alpha[t], s.beta[t]
        m1, v1 = ab_prev.sqrt() * x0, 1 - ab_prev
        cov = alpha.sqrt() * v1
        v2 = alpha * v1 + beta
        m2 = alpha.sqrt() * m1
        assert mean.item() == pytest.approx((m1 + cov / v2 * (x_t - m2)).item(), rel=1e-10)
        assert var.item() == pytest.approx((v1 - cov**2 / v2).item(), rel=1e-10)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_parameterisations_round_trip(prediction):
    s = cosine(T=100)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(64, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(64, 2, generator=g, dtype=torch.float64)
    t = torch.randint(0, 100, (64,), generator=g)
    x_t = q_sample(s, x0, t, eps)
    out = target(prediction, s, x0, eps, t)  # what a perfect network outputs
    a = s.alpha_bar[t][:, None]
    pred = to_eps_x0(prediction, out, x_t, a)
    assert torch.allclose(pred.eps, eps, atol=1e-9) and torch.allclose(pred.x0, x0, atol=1e-9)


class OnePoint(torch.nn.Module):
    """The exact eps-predictor for data that is a single point."""

    def __init__(self, schedule, point):
        super().__init__()
        self.schedule, self.point = schedule, point
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t, y=None):
        a = self.schedule.alpha_bar[t.round().long()].to(x_t)[:, None]  # t: the (float) timestep of a level
        return (x_t - a.sqrt() * self.point) / (1 - a).sqrt()


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
@pytest.mark.parametrize("steps", [None, 25])
def test_ddpm_with_an_oracle_returns_the_point(variance, steps):
    s = linear(T=200)
    point = torch.tensor([1.0, -2.0], dtype=torch.float64)
    den = Denoiser(OnePoint(s, point).double(), s)
    x_T = torch.randn(128, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0, nfe = ddpm(den, x_T, steps, torch.Generator().manual_seed(1), variance=variance)
    assert nfe == (steps or 200)
    assert torch.allclose(x0, point.expand_as(x0), atol=1e-6)


def test_ddpm_marginal_is_exact_for_gaussian_data():
    """For data N(m, s^2), the optimal eps-predictor is known; 1000-step ancestral sampling with
    it must reproduce N(m, s^2)."""
    sched = linear(T=1000)
    m, sd = 0.5, 0.3

    class GaussianOracle(OnePoint):
        def forward(self, x_t, t, y=None):
            a = self.schedule.alpha_bar[t.round().long()].to(x_t)[:, None]  # t: the (float) timestep of a level
            var_t = a * sd**2 + (1 - a)  # marginal variance of x_t
            # E[eps | x_t] = sqrt(1-a) (x_t - sqrt(a) m) / var_t
            return (1 - a).sqrt() * (x_t - a.sqrt() * m) / var_t

    den = Denoiser(GaussianOracle(sched, None).double(), sched)
    x_T = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x0, _ = ddpm(den, x_T, None, torch.Generator().manual_seed(4))
    assert x0.mean().item() == pytest.approx(m, abs=0.01)
    assert x0.std().item() == pytest.approx(sd, rel=0.03)


def test_loss_decreases_when_training_a_small_model():
    from ddpmctl.networks.mlp import MLP

    torch.manual_seed(0)
    s = linear(T=100)
    net = MLP(width=32, depth=2, data_shape=(2,))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = DiffusionLoss(s)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 2) * 0.1 + torch.tensor([1.0, 1.0])
    losses = []
    for i in range(300):
        loss = loss_fn(net, x[torch.randint(0, 4096, (256,), generator=g)], None, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-30:]) / 30 < 0.6 * sum(losses[:30]) / 30


def test_label_dropout_uses_the_null_label():
    s = linear(T=10)
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x_t, t, y=None):
            seen.append(y.clone())
            return torch.zeros_like(x_t)

    loss = DiffusionLoss(s, p_uncond=0.5, num_classes=3)
    y = torch.zeros(10_000, dtype=torch.long)
    loss(Spy(), torch.zeros(10_000, 2), y, torch.Generator().manual_seed(0))
    frac_null = (seen[0] == 3).float().mean().item()
    assert 0.45 < frac_null < 0.55 and set(seen[0].unique().tolist()) == {0, 3}


# -- min-SNR-gamma weighting (Hang et al. 2023) -------------------------------------------------


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weighs_every_target_as_min_snr_gamma_times_the_x0_error(prediction):
    """For any network output, the weighted loss on the network's own target equals
    min(SNR_t, gamma) ||x0 - x0_hat||^2 (the weighting of the paper, in x0 space)."""
    s = linear(200)
    g = torch.Generator().manual_seed(0)
    x0, eps, out = (torch.randn((64, 3), generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.randint(0, 200, (64,), generator=g)
    a = s.alpha_bar[t]
    x_t = q_sample(s, x0, t, eps)
    _, x0_hat = eps_x0_from_output(prediction, out, x_t, a[:, None])
    snr = a / (1 - a)
    gamma = 5.0
    weighted = min_snr_weight(prediction, snr, gamma) * ((out - target(prediction, s, x0, eps, t)) ** 2).sum(1)
    assert torch.allclose(weighted, snr.clamp(max=gamma) * ((x0 - x0_hat) ** 2).sum(1), rtol=1e-8)
    assert (snr > gamma).any() and (snr < gamma).any()  # both sides of the clip are exercised


def test_min_snr_loss_with_a_huge_gamma_is_l_simple_and_vanishes_for_the_exact_target():
    s = linear(100)
    x0 = torch.randn(256, 2)
    net = lambda x_t, t, y: torch.zeros_like(x_t)  # noqa: E731
    plain = DiffusionLoss(s)(net, x0, None, torch.Generator().manual_seed(3))
    huge = DiffusionLoss(s, snr_gamma=1e12)(net, x0, None, torch.Generator().manual_seed(3))
    assert torch.allclose(plain, huge, rtol=1e-6)
    clipped = DiffusionLoss(s, snr_gamma=1.0)(net, x0, None, torch.Generator().manual_seed(3))
    assert clipped < plain  # eps weights min(SNR, 1) / SNR are at most 1, below 1 wherever SNR > 1

    class Oracle:  # outputs the exact eps the loss drew
        def __call__(self, x_t, t, y):
            a = s.alpha_bar[t].float()[:, None]
            return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    assert DiffusionLoss(s, snr_gamma=5.0)(Oracle(), x0, None, torch.Generator().manual_seed(3)) < 1e-8
