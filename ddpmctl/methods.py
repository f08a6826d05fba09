"""Few-step methods: models that generate in one or two network evaluations.

A method is a plugin (entry-point group ``ddpmctl.methods``) that changes what a run trains: its
loss, and what its network reads. It is set with the run's ``method`` setting, trained from
scratch (`ddpmctl train --method NAME`) or from a trained run (`ddpmctl distill RUN --method
NAME`: the new run starts from the run's EMA weights, its teacher). Samples come from the
``few-step`` sampler (samplers/fewstep.py), which jumps from level to level with

    x_next = x0_hat + sigma_next (sqrt(1 - gamma^2) eps_hat + gamma z)      (scaled state, z fresh noise)

where the denoiser is asked at (sigma, sigma_next), so a model of a jump answers for the jump.

consistency   a consistency model f(x, sigma) = x0 for every point of an ODE trajectory (Song
              et al. 2023): the process's own x0_hat, so it is any process's network. Trained by
              easy consistency tuning (ECT, Geng et al. 2024): ln sigma ~ N(P_mean, P_std^2), a
              second level r = sigma (1 - q^-stage n(sigma)) that moves towards sigma stage by
              stage, and the target f(x_r, r) under stop-gradient, where x_r is x_0 + r eps
              (target "data": consistency training, no teacher network) or one Heun step of
              the teacher's probability-flow ODE from x_sigma (target "teacher": consistency
              distillation). At stage 0, r <= 0 and the target is x_0: the diffusion loss the
              teacher was trained with, so tuning starts where the teacher is. From scratch
              (`ddpmctl train --method consistency`, EDM's process unless told) the same
              curriculum is consistency training: its first stage trains a diffusion model.
meanflow      the average velocity u(z_t, r, t) = (1 / (t - r)) int_r^t v(z_s, s) ds of the flow
              process (Geng et al. 2025): one jump z_r = z_t - (t - r) u. Trained from the MeanFlow
              identity u = v - (t - r) (v . grad_z u + d_t u), the total derivative taken by one
              forward-mode product (torch.func.jvp) and the target under stop-gradient. Its network
              reads two noise levels: t and t - r (``noise_inputs = 2``).

Contract of a method class: ``Options``; ``noise_inputs`` (1, or 2 for a network that also reads
the jump's end); ``sampling``, the few-step sampler's defaults for its models (``gamma``, the
noise refresh; ``sigma_max``, where the first jump starts); ``processes``, those it
is defined on (None: all); ``default_process``, the process of a run trained from scratch unless
told (None: the phase's); ``loss(process, p_uncond, num_classes, teacher, steps)`` -> a loss
``loss(net, x0, y, generator)`` for the training loop (``teacher``: the teacher run's
pipeline.Model, whose ``denoiser(guidance, clip_x0)`` the loss may call, or None), with ``set_step(step)`` when it follows a
curriculum; ``second_noise(process, sigma, sigma_next)``, the network's second noise input.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from pydantic import Field

from ddpmctl.denoiser import Denoiser
from ddpmctl.processes import C_NOISE_SCALE, Flow, Process, _col, drop_labels
from ddpmctl.registry import PluginOptions


class Method:
    """The contract every few-step method follows (module docstring)."""

    name = "method"
    noise_inputs = 1
    sampling: dict = {"gamma": 0.0}  # the few-step sampler's defaults for its models
    processes: Optional[tuple[str, ...]] = None
    default_process: Optional[str] = None  # the process of a run trained from scratch unless told (None: the phase's)
    uses_teacher = False  # whether its loss calls the teacher network (not only starts from its weights)

    def loss(self, process: Process, p_uncond: float, num_classes: int, teacher, steps: int):
        raise NotImplementedError

    def second_noise(self, process: Process, sigma: torch.Tensor, sigma_next: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError(f"method {self.name} reads one noise level")


def x0_of(net, process: Process, x: torch.Tensor, sigma: torch.Tensor, y) -> torch.Tensor:
    """The process's x0_hat of ``net`` at scaled state x and per-example levels sigma (B,), float64."""
    x_in, c_noise = process.network_input(x, sigma)
    return process.x0_from_output(net(x_in, c_noise, y).float(), x, sigma)


# ---------------------------------------------------------------------------------------------
# Consistency models: easy consistency tuning (Geng et al. 2024) and consistency distillation


class ConsistencyOptions(PluginOptions):
    target: Literal["data", "teacher"] = Field("data", description="the second point of the pair: x_0 + r eps (consistency training, ECT) or a Heun step of the teacher's ODE (consistency distillation; needs a teacher run)")
    P_mean: float = Field(-1.1, description="mean of ln(sigma) (ECT)")
    P_std: float = Field(2.0, gt=0, description="standard deviation of ln(sigma) (ECT)")
    stages: int = Field(8, ge=1, le=64, description="curriculum stages over the run's steps: in stage s the gap sigma - r shrinks by q^-s")
    q: float = Field(2.0, gt=1, description="shrink factor of the gap per stage (ECT)")
    k: float = Field(8.0, ge=0, description="n(sigma) = 1 + k sigmoid(-b sigma): larger gaps at low noise (ECT)")
    b: float = Field(1.0, ge=0, description="see k")
    huber_c: float = Field(0.0, ge=0, description="pseudo-Huber constant c of d = sqrt(||.||^2 / D + c^2) - c (0: the RMS distance, ECT's adaptive weighting)")
    teacher_guidance: float = Field(1.0, ge=0, description="classifier-free guidance of the teacher's ODE step (target teacher, conditional runs)")
    sigma_start: float = Field(20.0, gt=0, description="the level the few-step sampler starts from: ln sigma ~ N(-1.1, 2^2) trains 2% of pairs above 20 and 0.3% above 80, EDM's highest (MNIST digit 0: one step from 20 gave classifier FID 1.59, from 80 4.29)")


class Consistency(Method):
    """Consistency models by easy consistency tuning or consistency distillation (module docstring)."""

    Options = ConsistencyOptions
    name = "consistency"
    default_process = "edm"  # EDM's preconditioning keeps x0_hat bounded at the levels one step starts from

    def __init__(self, target="data", P_mean=-1.1, P_std=2.0, stages=8, q=2.0, k=8.0, b=1.0, huber_c=0.0, teacher_guidance=1.0, sigma_start=20.0):
        self.target, self.P_mean, self.P_std = target, P_mean, P_std
        # Multistep consistency sampling re-noises with fresh noise (Song et al. 2023, Alg. 1).
        self.sampling = {"gamma": 1.0, "sigma_max": sigma_start}
        self.stages, self.q, self.k, self.b, self.huber_c, self.teacher_guidance = stages, q, k, b, huber_c, teacher_guidance
        self.uses_teacher = target == "teacher"

    def loss(self, process, p_uncond=0.0, num_classes=0, teacher=None, steps=1):
        if not self.uses_teacher:
            return ConsistencyLoss(self, process, p_uncond, num_classes, None, steps)
        if teacher is None:
            raise ValueError("consistency distillation (target teacher) needs a teacher run: use `ddpmctl distill RUN`")
        den = teacher.denoiser(self.teacher_guidance, clip_x0=0)  # the guided ODE, x0_hat unclipped
        return ConsistencyLoss(self, process, p_uncond, num_classes, den, steps)


class ConsistencyLoss:
    """E d(f(x_sigma, sigma), sg f(x_r, r)) / (sigma - r) (ECT, eq. 8 with its adaptive weighting)."""

    def __init__(self, method: Consistency, process: Process, p_uncond: float, num_classes: int, teacher: Optional[Denoiser], steps: int):
        self.m, self.process, self.p_uncond, self.num_classes, self.teacher = method, process, p_uncond, num_classes, teacher
        self.stage_length = max(1, math.ceil(steps / method.stages))
        self.stage = 0

    def set_step(self, step: int) -> None:
        self.stage = min(step // self.stage_length, self.m.stages - 1)

    def levels(self, B: int, device, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma, r) per example: ln sigma ~ N(P_mean, P_std^2) within the process's range, and
        r = sigma (1 - q^-stage (1 + k sigmoid(-b sigma))), 0 where that is below the range."""
        m, p = self.m, self.process
        n = torch.randn(B, device=device, generator=generator, dtype=torch.float64)
        sigma = (m.P_mean + m.P_std * n).exp().clamp(p.sigma_min, p.sigma_max)
        r = sigma * (1 - m.q ** -self.stage * (1 + m.k * torch.sigmoid(-m.b * sigma)))
        return sigma, torch.where(r >= p.sigma_min, r, torch.zeros_like(r))

    def target(self, net, x0, x, eps, sigma, r, y) -> torch.Tensor:
        """f(x_r, r) without gradient; where r = 0, the end of the step itself: x_0 (consistency
        training), or the teacher's x0_hat, its Euler step to sigma = 0 (distillation)."""
        at = (r > 0).reshape(-1, *([1] * (x0.ndim - 1)))
        rr = torch.where(r > 0, r, sigma)  # any level where r = 0; replaced below
        if self.m.target == "teacher":
            x_r, end = self._heun(x, sigma, rr, y)
        else:
            x_r, end = x0 + _col(rr, x0) * eps, x0
        with torch.no_grad():
            f_r = x0_of(net, self.process, x_r, rr, y)
        return torch.where(at, f_r, end.float())

    def _heun(self, x, sigma, r, y) -> tuple[torch.Tensor, torch.Tensor]:
        """One Heun step of the teacher's probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma
        from sigma to r, and D(x; sigma) (the Euler step to 0)."""
        D, s, rc = self.teacher, _col(sigma, x), _col(r, x)
        x0_hat = D(x, sigma, y).x0
        d = (x - x0_hat) / s
        x_e = x + (rc - s) * d
        return x + (rc - s) * 0.5 * (d + (x_e - D(x_e, r, y).x0) / rc), x0_hat

    def __call__(self, net, x0: torch.Tensor, y, generator: torch.Generator) -> torch.Tensor:
        B = x0.shape[0]
        sigma, r = self.levels(B, x0.device, generator)
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        y = drop_labels(y, self.p_uncond, self.num_classes, generator)
        x = x0 + _col(sigma, x0) * eps
        f_target = self.target(net, x0, x, eps, sigma, r, y)
        f = x0_of(net, self.process, x, sigma, y)
        mse = (f - f_target).pow(2).reshape(B, -1).mean(1)
        # With c = 0, sqrt's slope is infinite at 0, where distillation starts (the student is the
        # teacher's copy): c is at least 1e-10, which keeps it finite and d(0) = 0.
        c = max(self.m.huber_c, 1e-10)
        d = (mse + c**2).sqrt() - c
        return (d / (sigma - r).to(d.dtype)).mean()


# ---------------------------------------------------------------------------------------------
# MeanFlow (Geng et al. 2025): the average velocity of the flow process


class MeanFlowOptions(PluginOptions):
    r_fraction: float = Field(0.25, ge=0, le=1, description="fraction of examples with r < t (the rest: r = t, plain flow matching; MeanFlow table 1a)")
    t_mean: float = Field(-0.4, description="logit-normal mean of t and r (MeanFlow)")
    t_std: float = Field(1.0, gt=0, description="logit-normal standard deviation of t and r")
    p: float = Field(1.0, ge=0, description="adaptive loss weight 1 / (||error||^2 + c)^p (MeanFlow sec. 4.3; 0: plain squared error)")
    c: float = Field(1e-3, gt=0, description="see p")


class MeanFlow(Method):
    """MeanFlow (module docstring): a network of (z_t, t, t - r) trained to the average velocity."""

    Options = MeanFlowOptions
    name = "meanflow"
    noise_inputs = 2
    sampling = {"gamma": 0.0}  # a jump of the ODE itself: no fresh noise
    processes = ("flow",)
    default_process = "flow"

    def __init__(self, r_fraction=0.25, t_mean=-0.4, t_std=1.0, p=1.0, c=1e-3):
        self.r_fraction, self.t_mean, self.t_std, self.p, self.c = r_fraction, t_mean, t_std, p, c

    def second_noise(self, process, sigma, sigma_next):
        """C (t - r): the gap in the flow's time; r = t (0) without a jump's end."""
        if sigma_next is None:
            return torch.zeros_like(sigma, dtype=torch.float32)
        gap = process.time(sigma) - process.time(sigma_next)
        return (gap * C_NOISE_SCALE).float()

    def loss(self, process, p_uncond=0.0, num_classes=0, teacher=None, steps=1):
        if not isinstance(process, Flow):
            raise ValueError(f"meanflow is defined on the flow process, not {process.name}; train with --process flow")
        return MeanFlowLoss(self, process, p_uncond, num_classes)


class MeanFlowLoss:
    """|| u(z_t, r, t) - sg(v - (t - r) (v . grad_z u + d_t u)) ||^2, adaptively weighted
    (MeanFlow, Geng et al. 2025, eq. 9-10 and Algorithm 1), v = eps - x_0."""

    def __init__(self, method: MeanFlow, process: Flow, p_uncond: float, num_classes: int):
        self.m, self.process, self.p_uncond, self.num_classes = method, process, p_uncond, num_classes
        self.t_range = tuple(float(process.time(torch.tensor(v, dtype=torch.float64))) for v in (process.sigma_min, process.sigma_max))

    def times(self, B: int, device, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, r), t >= r, both logit-normal in the process's range; r = t for 1 - r_fraction of them."""
        m = self.m
        n = torch.randn(2, B, device=device, generator=generator, dtype=torch.float64)
        tr = torch.sigmoid(m.t_mean + m.t_std * n).clamp(*self.t_range)
        t, r = tr.max(0).values, tr.min(0).values
        same = torch.rand(B, device=device, generator=generator) >= m.r_fraction
        return t, torch.where(same, t, r)

    def pair(self, net, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, v: torch.Tensor, y) -> tuple[torch.Tensor, torch.Tensor]:
        """(u(z_t, r, t), its target v - (t - r) du/dt) at z_t with velocity v, t and r (B,)."""
        tf, rf = t.float(), r.float()

        def u_of(z, t, r):
            return net(z, torch.stack([t, t - r], 1) * C_NOISE_SCALE, y)

        # du/dt along the trajectory: the tangent (dz/dt, dt/dt, dr/dt) = (v, 1, 0).
        u, dudt = torch.func.jvp(u_of, (z, tf, rf), (v, torch.ones_like(tf), torch.zeros_like(rf)))
        return u, (v - _col(t - r, v) * dudt).detach()

    def __call__(self, net, x0: torch.Tensor, y, generator: torch.Generator) -> torch.Tensor:
        B = x0.shape[0]
        t, r = self.times(B, x0.device, generator)
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        y = drop_labels(y, self.p_uncond, self.num_classes, generator)
        tc = _col(t, x0)
        u, u_target = self.pair(net, (1 - tc) * x0 + tc * eps, t, r, eps - x0, y)  # z_t and the conditional velocity
        err = (u.float() - u_target.float()).pow(2).reshape(B, -1).mean(1)
        w = (err.detach() + self.m.c) ** -self.m.p
        return (w * err).mean()
