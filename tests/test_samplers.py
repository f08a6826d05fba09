"""Sampler contracts (every registered sampler, third-party ones included) and the properties
of each algorithm: DDIM determinism and inversion, respacing, learned variance, x0 clipping."""

from __future__ import annotations

import pytest
import torch

from ddpmctl import registry
from ddpmctl.denoiser import Denoiser, dynamic_threshold, to_eps_x0
from ddpmctl.diffusion import DiffusionLoss, HybridLoss, q_sample, target
from ddpmctl.errors import NumericalError, OptionsError
from ddpmctl.processes import DDPM
from ddpmctl.samplers.base import SPACINGS, sigma_grid
from ddpmctl.samplers.ddim import ddim, ddim_invert
from ddpmctl.samplers.ddpm import ddpm
from ddpmctl.samplers.heun import heun
from ddpmctl.schedules import cosine, linear

SAMPLERS = registry.names("sampler")


class GaussianOracle(torch.nn.Module):
    """The exact eps_hat for data N(mu, s^2 I): E[x0 | x_t] = mu + sqrt(a) s^2 / (a s^2 + 1 - a)
    (x_t - sqrt(a) mu). With s = 0 it is the one-point oracle eps = (x_t - sqrt(a) mu) / sqrt(1 - a).
    ``out_mult=2`` appends a constant variance channel v (learned-variance networks)."""

    def __init__(self, schedule, mu, s=0.0, out_mult=1, v=0.0):
        super().__init__()
        self.alpha_bar, self.mu, self.s, self.out_mult, self.v = schedule.alpha_bar, mu, s, out_mult, v
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x_t, t, y=None):  # t: the DDPM process's (float) timestep, on a level here
        a = self.alpha_bar[t.round().long()].reshape(-1, *([1] * (x_t.ndim - 1)))
        x0 = self.mu + a.sqrt() * self.s**2 / (a * self.s**2 + 1 - a) * (x_t - a.sqrt() * self.mu)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if self.out_mult == 1 else torch.cat([eps, torch.full_like(eps, self.v)], dim=1)


MU = torch.tensor([1.5, -0.7], dtype=torch.float64)


def run(name, den, x_T, steps, generator=None, callback=None, **options):
    fn, opts = registry.resolve("sampler", name, options)
    return fn(den, x_T, steps, generator, callback, None, **opts.model_dump())


# -- contract tests: every registered sampler ---------------------------------------------------

@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("steps", [1, 5, 20])
def test_oracle_on_one_point_returns_the_point(name, steps):
    sched = linear(T=100)
    den = Denoiser(GaussianOracle(sched, MU), sched)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    x0, nfe = run(name, den, x_T, steps, torch.Generator().manual_seed(1))
    assert x0.shape == x_T.shape and isinstance(nfe, int) and nfe >= 1
    torch.testing.assert_close(x0, MU.expand_as(x0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", SAMPLERS)
def test_the_plugin_author_contract_check_passes(name):
    from ddpmctl.testing import check_sampler_contract

    check_sampler_contract(name)


@pytest.mark.parametrize("name", SAMPLERS)
def test_oracle_on_one_point_with_a_learned_variance_network(name):
    """A network with twice the channels (out_mult=2) is handled by every sampler."""
    sched = cosine(T=50)
    den = Denoiser(GaussianOracle(sched, MU, out_mult=2, v=0.3), sched)
    x0, _ = run(name, den, torch.randn(32, 2, generator=torch.Generator().manual_seed(0)), 10, torch.Generator().manual_seed(1))
    torch.testing.assert_close(x0, MU.expand_as(x0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", SAMPLERS)
def test_gaussian_data_is_recovered_with_enough_steps(name):
    sched = linear(T=100)
    den = Denoiser(GaussianOracle(sched, MU, s=0.5), sched)
    x0, _ = run(name, den, torch.randn(4000, 2, generator=torch.Generator().manual_seed(0)), 100, torch.Generator().manual_seed(1))
    assert (x0.mean(0) - MU).abs().max() < 0.05
    assert (x0.std(0) - 0.5).abs().max() < 0.06


@pytest.mark.parametrize("name", SAMPLERS)
def test_noise_of_a_row_depends_only_on_its_generator(name):
    """With a list of generators (pipeline.sample's blocks), rows 0..3 come out the same
    whether or not rows 4..7 are drawn beside them."""
    sched = linear(T=100)
    den = Denoiser(GaussianOracle(sched, MU, s=0.5), sched)
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    both, _ = run(name, den, x_T, 10, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    first, _ = run(name, den, x_T[:4], 10, [torch.Generator().manual_seed(1)])
    torch.testing.assert_close(both[:4], first)


@pytest.mark.parametrize("name", SAMPLERS)
def test_callback_sees_every_step(name):
    sched = linear(T=100)
    den = Denoiser(GaussianOracle(sched, MU, s=0.5), sched)
    seen = []
    x0, _ = run(name, den, torch.randn(4, 2, generator=torch.Generator().manual_seed(0)), 7, torch.Generator().manual_seed(1),
                callback=lambda i, S, t, x_t, x0_hat: seen.append((i, S, t, tuple(x_t.shape), tuple(x0_hat.shape))))
    S = seen[0][1]
    assert [s[0] for s in seen] == list(range(1, S + 1))
    assert all(sched.sigma[0] <= s[2] <= sched.sigma[-1] and s[3] == s[4] == (4, 2) for s in seen)


@pytest.mark.parametrize("name", SAMPLERS)
def test_non_finite_values_are_reported_with_the_step(name):
    class Broken(GaussianOracle):
        def forward(self, x_t, t, y=None):
            return torch.full_like(x_t, float("nan"))

    sched = linear(T=100)
    with pytest.raises(NumericalError, match="step 1"):
        run(name, Denoiser(Broken(sched, MU), sched), torch.randn(4, 2), 5, torch.Generator().manual_seed(0))


# -- DDIM -----------------------------------------------------------------------------------------

def test_ddim_with_eta_0_is_deterministic():
    sched = cosine(T=100)
    den = Denoiser(GaussianOracle(sched, MU, s=0.5), sched)
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    a, _ = ddim(den, x_T, 10, torch.Generator().manual_seed(1), eta=0.0)
    b, _ = ddim(den, x_T, 10, torch.Generator().manual_seed(2), eta=0.0)
    assert torch.equal(a, b)
    c, _ = ddim(den, x_T, 10, torch.Generator().manual_seed(2), eta=1.0)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("spacing", ["uniform", "quadratic"])
def test_ddim_inversion_then_decoding_gives_back_the_start(spacing):
    sched = linear(T=100)
    den = Denoiser(GaussianOracle(sched, MU, s=0.5), sched)
    x0 = MU + 0.5 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_T, nfe = ddim_invert(den, x0, 100, spacing=spacing)  # plain Euler inversion: first-order error
    back, _ = ddim(den, x_T, 100, eta=0.0, spacing=spacing)
    assert nfe == 100 and (back - x0).abs().max() < 0.1
    assert 0.8 < float(x_T.std()) < 1.3  # the latent is noise-like
    x_T, nfe = ddim_invert(den, x0, 20, spacing=spacing, refine=10)  # fixed-point: exact inverse of the decoder
    back, _ = ddim(den, x_T, 20, eta=0.0, spacing=spacing)
    assert nfe == 20 * 11 and (back - x0).abs().max() < 1e-3


def test_ddim_with_eta_1_is_ancestral_sampling():
    """eq. 16 with eta = 1 gives sigma_t^2 = beta-tilde_t and the posterior mean: DDPM itself."""
    sched = linear(T=100)
    den = Denoiser(GaussianOracle(sched, MU, s=0.5), sched)
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    for steps in (100, 10):
        a, _ = ddim(den, x_T, steps, torch.Generator().manual_seed(3), eta=1.0)
        b, _ = ddpm(den, x_T, steps, torch.Generator().manual_seed(3), variance="beta_tilde")
        torch.testing.assert_close(a, b)


# -- Heun ------------------------------------------------------------------------------------------

def test_heun_with_churn_is_stochastic_and_still_samples_the_data():
    sched = linear(T=100)
    x_T = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    one, _ = heun(Denoiser(GaussianOracle(sched, MU), sched), x_T[:16], 10, torch.Generator().manual_seed(1), S_churn=40.0)
    torch.testing.assert_close(one, MU.expand_as(one), atol=1e-6, rtol=0)
    den = Denoiser(GaussianOracle(sched, MU, s=0.5), sched)
    a, nfe = heun(den, x_T, 40, torch.Generator().manual_seed(1), S_churn=40.0)
    b, _ = heun(den, x_T, 40, torch.Generator().manual_seed(2), S_churn=40.0)
    assert not torch.allclose(a, b) and nfe % 2 == 1
    assert (a.mean(0) - MU).abs().max() < 0.05 and (a.std(0) - 0.5).abs().max() < 0.06


# -- DDPM: respacing and variances ----------------------------------------------------------------

def test_respaced_ddpm_with_all_steps_is_plain_ddpm():
    """Algorithm 2 written out with eq. 11 and the schedule's own betas gives the same samples."""
    sched = linear(T=50)
    den = Denoiser(GaussianOracle(sched, MU, s=0.5), sched)
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    for variance, var in (("beta", sched.beta), ("beta_tilde", sched.beta_tilde)):
        got, nfe = ddpm(den, x_T, sched.T, torch.Generator().manual_seed(5), variance=variance)
        g = torch.Generator().manual_seed(5)
        x = x_T.double()
        for t in reversed(range(sched.T)):
            eps = den(x / sched.alpha_bar[t].sqrt(), sched.sigma[t]).eps  # the denoiser reads the scaled state
            mean = (x - sched.beta[t] / (1 - sched.alpha_bar[t]).sqrt() * eps) / sched.alpha[t].sqrt()  # eq. 11
            x = mean + var[t].sqrt() * torch.randn(x.shape, generator=g).double() if t > 0 else mean
        assert nfe == sched.T
        torch.testing.assert_close(got, x)


def test_learned_variance_interpolates_between_beta_and_beta_tilde():
    """v = 1 (network output +1) is sigma^2 = beta; v = 0 (output -1) is beta-tilde, respaced too."""
    sched = linear(T=100)
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    for out, fixed in ((1.0, "beta"), (-1.0, "beta_tilde")):
        den = Denoiser(GaussianOracle(sched, MU, s=0.5, out_mult=2, v=out), sched)
        plain = Denoiser(GaussianOracle(sched, MU, s=0.5), sched)
        a, _ = ddpm(den, x_T, 10, torch.Generator().manual_seed(3))  # variance="auto": learned
        b, _ = ddpm(plain, x_T, 10, torch.Generator().manual_seed(3), variance=fixed)
        torch.testing.assert_close(a, b)


def test_learned_variance_without_the_model_is_a_clear_error():
    sched = linear(T=100)
    with pytest.raises(OptionsError, match="learn_sigma"):
        ddpm(Denoiser(GaussianOracle(sched, MU), sched), torch.randn(4, 2), 5, variance="learned")


# -- noise-level grids ----------------------------------------------------------------------------

@pytest.mark.parametrize("spacing", SPACINGS)
def test_discrete_grids_are_distinct_levels_of_the_model_decreasing_to_the_lowest(spacing):
    process = DDPM(linear(T=100))
    for S in (1, 2, 5, 37, 99, 100):
        g = sigma_grid(process, S, spacing, sigma_min=1e-9, sigma_max=1e9)
        assert len(g) == S and bool((g.diff() < 0).all())
        assert all(bool((process.levels == s).any()) for s in g)  # only levels the model was trained on
        assert float(g[0]) == float(process.levels[-1]) and (S == 1 or float(g[-1]) == float(process.levels[0]))


@pytest.mark.parametrize("make", [linear, cosine])
def test_logsnr_grid_is_uniform_in_lambda(make):
    process = DDPM(make(T=1000))
    g = sigma_grid(process, 20, "logsnr")
    gaps = g.log().diff().abs()
    t = process.time(g)
    free = (t.diff().abs() > 1).tolist()  # neighbouring levels are as close as the model allows
    assert float(gaps[free].max() / gaps[free].min()) < 1.5


def test_cosine_grid_is_uniform_in_the_cosine_schedules_time():
    """sigma = tan(pi t / 2) for t even: on a continuous process, even steps in atan(sigma)."""
    process = registry.build("process", "edm", {})
    g = sigma_grid(process, 12, "cosine")
    gaps = g.atan().diff()
    assert torch.allclose(gaps, gaps[0].expand_as(gaps), rtol=1e-9)
    assert float(g[0]) == pytest.approx(process.sigma_max) and float(g[-1]) == pytest.approx(process.sigma_min)


def test_karras_grid_is_clamped_to_the_model_range():
    process = DDPM(linear(T=100))
    g = sigma_grid(process, 10, "karras", sigma_min=1e-6, sigma_max=1e6)
    assert float(g[-1]) == float(process.levels[0]) and float(g[0]) == float(process.levels[-1])
    g = sigma_grid(process, 10, "karras", sigma_max=1.0)
    assert float(g[0]) == pytest.approx(1.0, rel=0.1)
    with pytest.raises(OptionsError, match="sigma_min"):
        registry.validate_options("sampler", "heun", {"sigma_min": 2.0, "sigma_max": 1.0})


# -- parameterisations, clipping, the hybrid loss -------------------------------------------------

@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_denoiser_recovers_eps_and_x0_from_each_parameterisation(prediction):
    sched = cosine(T=100)
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.randint(0, 100, (32,), generator=torch.Generator().manual_seed(2))
    x_t = q_sample(sched, x0, t, eps)

    class Exact(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, x, tt, y=None):
            return target(prediction, sched, x0, eps, tt.round().long())

    a = sched.alpha_bar[t].reshape(-1, 1)
    pred = Denoiser(Exact(), sched, prediction)(x_t / a.sqrt(), sched.sigma[t])
    torch.testing.assert_close(pred.eps, eps)
    torch.testing.assert_close(pred.x0, x0)
    back = to_eps_x0(prediction, target(prediction, sched, pred.x0, pred.eps, t), x_t, a)
    torch.testing.assert_close(back.x0, x0)


def test_clipping_and_dynamic_thresholding_bound_x0_and_are_counted():
    sched = linear(T=100)
    far = torch.tensor([5.0, -4.0], dtype=torch.float64)
    x_t = torch.randn(8, 2, dtype=torch.float64)
    den = Denoiser(GaussianOracle(sched, far), sched, clip_x0=1.0)
    pred = den(x_t, sched.sigma[50])
    assert float(pred.x0.abs().max()) <= 1.0 and den.clip_count == 16 and den.x0_count == 16
    torch.testing.assert_close(pred.eps, (x_t - pred.x0) / sched.sigma[50])  # consistent with the clipped x0
    x = torch.tensor([[0.5, -0.2, 3.0, -4.0], [0.1, 0.2, -0.3, 0.9]])
    out = dynamic_threshold(x, 50.0)
    assert float(out.abs().max()) <= 1.0 and torch.equal(out[1], x[1])  # within [-1, 1]: untouched


def test_hybrid_loss_is_finite_and_trains_the_variance_through_l_vlb_only():
    """The variance half gets a gradient; the mean half gets only L_simple's (stop-gradient)."""
    sched = linear(T=100)
    for shape, decoder in (((64, 2), "gaussian"), ((8, 1, 8, 8), "discretized")):
        x0 = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
        out = torch.zeros((shape[0], 2 * shape[1], *shape[2:]), requires_grad=True)
        net = lambda x_t, t, y: out  # noqa: E731
        hybrid = HybridLoss(sched, "eps", vlb_weight=0.001, decoder=decoder)
        loss = hybrid(net, x0, None, torch.Generator().manual_seed(1))
        assert torch.isfinite(loss)
        loss.backward()
        g_hybrid = out.grad.clone()
        out.grad = None
        simple = DiffusionLoss(sched, "eps")
        mean_net = lambda x_t, t, y: out[:, : shape[1]]  # noqa: E731
        simple(mean_net, x0, None, torch.Generator().manual_seed(1)).backward()
        mean_grad, var_grad = g_hybrid.chunk(2, dim=1)
        torch.testing.assert_close(mean_grad, out.grad[:, : shape[1]])
        assert float(var_grad.abs().sum()) > 0


def test_learned_variance_network_trains_end_to_end():
    from ddpmctl.networks.mlp import MLP

    torch.manual_seed(0)
    sched = linear(T=100)
    net = MLP(width=32, depth=1, data_shape=(2,), out_mult=2)
    loss = HybridLoss(sched)(net, torch.randn(128, 2), None, torch.Generator().manual_seed(0))
    loss.backward()
    last = net.out[-1]
    assert torch.isfinite(loss) and float(last.weight.grad[2:].abs().sum()) > 0  # rows of the variance outputs
    pred = Denoiser(net, sched)(torch.randn(4, 2), sched.sigma[10])
    assert pred.var_interp is not None and pred.var_interp.shape == (4, 2)
