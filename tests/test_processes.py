"""The continuous noise-level core (processes.py): each process's closed forms, its network
parameterisation, its training loss, and every registered sampler on every registered process
with the exact denoiser of Gaussian data."""

from __future__ import annotations

import math

import pytest
import torch

import ddpmctl
from ddpmctl import registry
from ddpmctl.denoiser import Denoiser, Prediction
from ddpmctl.processes import DDPM, EDM, Flow
from ddpmctl.samplers.base import SPACINGS, sigma_grid
from ddpmctl.schedules import cosine, linear

PROCESSES = registry.names("process")
SAMPLERS = registry.names("sampler")
M, S = 1.0, 0.5  # Gaussian data N(M, S^2 I)


def build(name: str, **options):
    return registry.build("process", name, options, schedule=linear(T=1000), prediction="eps")


class ExactGaussian:
    """The exact denoiser of N(m, s^2 I) data for any process: on the scaled state x = x_0 + sigma eps,
    E[x_0 | x] = m + s^2 / (s^2 + sigma^2) (x - m)."""

    def __init__(self, process, m: float = M, s: float = S):
        self.process, self.m, self.s, self.nfe = process, m, s, 0

    def __call__(self, x, sigma, y=None, sigma_next=None):
        self.nfe += 1
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        x0 = self.m + self.s**2 / (self.s**2 + sigma**2) * (x - self.m)
        return Prediction((x - x0) / sigma, x0)


def steps_for(name: str, nfe: int, process) -> int:
    """Steps that cost about ``nfe`` network evaluations (Heun pays two a step), within the model's grid."""
    return min(process.max_steps, (nfe + 1) // 2 if name == "heun" else nfe)


def sample(name: str, process, nfe: int, n: int = 50000, seed: int = 0):
    fn, opts = registry.resolve("sampler", name, None)
    den = ExactGaussian(process)
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x0, used = fn(den, x_T, steps_for(name, nfe, process), torch.Generator().manual_seed(seed + 1), None, None, **opts.model_dump())
    return x0, used


# -- the contract: exact denoiser of Gaussian data ------------------------------------------------

@pytest.mark.parametrize("process_name", PROCESSES)
@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_reproduces_gaussian_data_on_every_process(name, process_name):
    """At about 1000 network evaluations (or the model's largest grid) the samples have the data's
    mean to 0.01 and its standard deviation to 1%."""
    x0, used = sample(name, build(process_name), 1000)
    assert used <= 1000 and used >= 500
    assert abs(float(x0.mean()) - M) < 0.01, float(x0.mean())
    assert abs(float(x0.std()) / S - 1) < 0.01, float(x0.std())


@pytest.mark.parametrize("process_name", PROCESSES)
def test_on_every_process_a_sampler_is_close_at_10_evaluations(process_name):
    process = build(process_name)
    errors = {name: abs(float(sample(name, process, 10)[0].std()) / S - 1) for name in SAMPLERS}
    assert min(errors.values()) < 0.03, errors


# -- each process's closed forms ------------------------------------------------------------------

@pytest.mark.parametrize("process_name", PROCESSES)
def test_network_parameterisation_round_trips(process_name):
    """Whatever the process feeds its network, the output its loss asks for gives back x_0."""
    process = build(process_name)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(64, 3, generator=g, dtype=torch.float64)
    sigma = torch.exp(torch.empty(64, dtype=torch.float64).uniform_(math.log(0.05), math.log(20.0), generator=g))
    if process.levels is not None:  # a discrete model: its own levels
        sigma = process.levels[torch.randint(0, len(process.levels), (64,), generator=g)]
    x = x0 + sigma[:, None] * eps  # the scaled state
    x_in, c_noise = process.network_input(x, sigma)
    a = process.scale(sigma)[:, None]
    # The network's exact output, as each loss defines it.
    if isinstance(process, DDPM):
        out = eps
        assert torch.allclose(x_in, a * x0 + (1 - a**2).sqrt() * eps)  # x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps
    elif isinstance(process, EDM):
        c_skip, c_out, c_in, _ = process.coefficients(sigma)
        out = (x0 - c_skip[:, None] * x) / c_out[:, None]
        assert torch.allclose(x_in, c_in[:, None] * x)
    else:
        out = eps - x0  # the velocity of the straight path
        t = process.time(sigma)[:, None]
        assert torch.allclose(x_in, (1 - t) * x0 + t * eps)
    assert c_noise.shape == (64,) and torch.isfinite(c_noise).all()
    assert torch.allclose(process.x0_from_output(out, x, sigma), x0)


@pytest.mark.parametrize("process_name", PROCESSES)
def test_time_and_sigma_are_inverse_and_grids_stay_in_range(process_name):
    process = build(process_name)
    sigma = sigma_grid(process, 50, "logsnr")
    assert torch.allclose(process.sigma_at(process.time(sigma)), sigma, rtol=1e-6)
    for spacing in SPACINGS:
        g = sigma_grid(process, 30, spacing)
        assert bool((g.diff() < 0).all()) and float(g[-1]) >= process.sigma_min * (1 - 1e-9) and float(g[0]) <= process.sigma_max * (1 + 1e-9)


def test_ddpm_process_is_the_schedule_it_wraps():
    sched = cosine(T=200)
    p = DDPM(sched)
    assert torch.equal(p.levels, sched.sigma) and p.max_steps == 200
    t = torch.arange(200, dtype=torch.float64)
    assert torch.equal(p.time(sched.sigma), t)  # on a level: exactly its timestep
    assert torch.allclose(p.scale(sched.sigma) ** 2, sched.alpha_bar)
    assert 10.0 < float(p.time(p.sigma_at(torch.tensor([10.5])))) < 11.0


def test_flow_is_the_straight_path_in_edm_terms():
    p = Flow()
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    sigma = p.sigma_at(t)
    assert torch.allclose(sigma, t / (1 - t)) and torch.allclose(p.scale(sigma), 1 - t)


def test_edm_coefficients_are_table_1():
    p = EDM(sigma_data=0.5)
    sigma = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = p.coefficients(sigma)
    assert torch.allclose(c_skip, 0.25 / (sigma**2 + 0.25)) and torch.allclose(c_in, 1 / (sigma**2 + 0.25).sqrt())
    assert torch.allclose(c_out, sigma * 0.5 / (sigma**2 + 0.25).sqrt())
    assert torch.allclose(c_noise, sigma.log() / 4 * 1000)
    assert float(c_skip[1]) == pytest.approx(0.5) and float(c_out[1]) == pytest.approx(0.5**1.5)  # sigma = sigma_data


# -- the training losses ----------------------------------------------------------------------------

@pytest.mark.parametrize("process_name", ["edm", "flow"])
def test_the_loss_vanishes_for_the_exact_network_and_not_otherwise(process_name):
    """A one-point dataset: the exact denoiser is known at every level; the network that outputs
    what the loss asks for of it scores zero."""
    process = build(process_name)
    point = torch.tensor([0.3, -0.8])
    x0 = point.expand(256, 2).contiguous()

    class Exact(torch.nn.Module):
        def forward(self, x_in, c_noise, y=None):
            if isinstance(process, EDM):
                sigma = (c_noise.double() / 1000 * 4).exp()
                c_skip, c_out, c_in, _ = process.coefficients(sigma)
                x = x_in / c_in[:, None].float()
                return (point - c_skip[:, None].float() * x) / c_out[:, None].float()
            t = (c_noise.double() / 1000)[:, None].float()
            eps = (x_in - (1 - t) * point) / t
            return eps - point

    loss = process.loss()
    assert float(loss(Exact(), x0, None, torch.Generator().manual_seed(0))) < 1e-6
    zero = lambda x_in, c_noise, y=None: torch.zeros_like(x_in)  # noqa: E731
    assert float(loss(zero, x0, None, torch.Generator().manual_seed(0))) > 0.01


def test_edm_draws_log_normal_levels():
    p = EDM(P_mean=-1.2, P_std=1.2)
    seen = []
    loss = p.loss()
    net = lambda x_in, c_noise, y=None: seen.append(c_noise) or torch.zeros_like(x_in)  # noqa: E731
    loss(net, torch.zeros(20000, 1), None, torch.Generator().manual_seed(0))
    log_sigma = seen[0].double() / 1000 * 4
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=0.03) and float(log_sigma.std()) == pytest.approx(1.2, abs=0.03)


# -- training and sampling end to end -------------------------------------------------------------

@pytest.mark.parametrize("process_name", ["edm", "flow"])
def test_a_model_of_each_process_trains_samples_and_resumes(process_name, tmp_path):
    run = ddpmctl.train(data="8gaussians", data_options={"n": 2000}, network_options={"width": 32, "depth": 2}, batch_size=128,
                        steps=300, checkpoint_every=150, threads=1, process=process_name, name=process_name, runs_dir=tmp_path)
    assert run.config.process == process_name and run.record.plugins["process"].name == process_name
    w2 = {}
    for sampler, steps in (("ddim", 20), ("dpm-solver++", 20), ("heun", 10), ("ipndm", 20), ("ddpm", 100)):
        s = run.sample(n=500, sampler=sampler, steps=steps, seed=0)
        assert s.x.shape == (500, 2) and torch.isfinite(s.x).all()
        w2[sampler] = run.evaluate("wasserstein", samples=s).results["wasserstein"].values["w2"]
    assert max(w2.values()) < 2.5, w2  # 300 steps: rough, but on the data's scale (8 modes at radius 2)
    again = ddpmctl.Run.load(run.path).sample(n=500, sampler="ddim", steps=20, seed=0)
    assert torch.equal(again.x, run.sample(n=500, sampler="ddim", steps=20, seed=0).x)
    assert ddpmctl.train(resume=run.path, steps=330, threads=1).step == 330


def test_ddpm_only_settings_are_refused_for_other_processes(tmp_path):
    with pytest.raises(ddpmctl.DdpmctlError, match="learn_sigma applies to the ddpm process only"):
        ddpmctl.train(data="8gaussians", process="edm", learn_sigma=True, runs_dir=tmp_path, steps=10)
    with pytest.raises(ddpmctl.DdpmctlError, match="prediction applies to the ddpm process only"):
        ddpmctl.train(data="8gaussians", process="flow", prediction="v", runs_dir=tmp_path, steps=10)
    with pytest.raises(ddpmctl.DdpmctlError, match="unknown process"):
        ddpmctl.train(data="8gaussians", process="sde", runs_dir=tmp_path, steps=10)
    assert not list(tmp_path.iterdir())


def test_the_denoiser_wraps_a_schedule_as_its_ddpm_process():
    sched = linear(T=50)
    net = torch.nn.Linear(2, 2).double()
    den = Denoiser(lambda x, c, y=None: net(x), sched)  # noqa: E731
    assert isinstance(den.process, DDPM) and den.process.schedule is sched


# -- which process a run gets -----------------------------------------------------------------------

def test_the_default_process_is_edm_for_images_ddpm_for_points_and_ddpm_when_a_ddpm_setting_is_given():
    """Issue 15's measurement made EDM the images default; a ddpm-only setting (learned variance,
    min-SNR, another prediction target or schedule) keeps the run on ddpm."""
    from ddpmctl.config import TrainSettings, saved
    from ddpmctl.datasets.base import Dataset
    from ddpmctl.pipeline import resolve

    images = Dataset("synthetic", torch.rand(8, 1, 8, 8) * 2 - 1, kind="images")
    points = Dataset("synthetic", torch.randn(8, 2), kind="points")
    assert resolve(saved(TrainSettings, {}), images).process == "edm"
    assert resolve(saved(TrainSettings, {}), points).process == "ddpm"
    for ddpm_setting in ({"learn_sigma": True}, {"loss_weighting": "min-snr"}, {"prediction": "v"}, {"schedule": "cosine"}):
        assert resolve(saved(TrainSettings, ddpm_setting), images).process == "ddpm", ddpm_setting
    assert resolve(saved(TrainSettings, {"process": "flow"}), images).process == "flow"


def test_a_run_recorded_before_processes_existed_is_a_ddpm_run():
    from ddpmctl.record import RunRecord

    raw = {"config": {"data": "mnist16"}, "data": {"shape": [1, 16, 16], "num_classes": 0, "kind": "images"}}
    assert RunRecord.from_json(raw, "config.json").config.process == "ddpm"
