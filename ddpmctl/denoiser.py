"""The denoiser: the only thing samplers call.

It wraps a network and its process and hides how the network is parameterised (eps, x0, v,
EDM's preconditioning, a velocity) and how guidance is applied. Samplers ask it for x0_hat and
eps_hat at a scaled state x and a noise level sigma (Karras et al. 2022's D(x; sigma)).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import torch

from ddpmctl.diffusion import eps_x0_from_output, split_variance
from ddpmctl.processes import DDPM, Process
from ddpmctl.schedules import Schedule


class Prediction(NamedTuple):
    eps: torch.Tensor  # eps_hat = (x - x0_hat) / sigma, shape of x
    x0: torch.Tensor  # x0_hat, shape of x
    # Learned variance only (networks built with out_mult=2): the interpolation weight v of
    # Nichol & Dhariwal 2021, eq. 15, Sigma = exp(v log beta_t + (1 - v) log beta-tilde_t),
    # shape of x_t; None when the network predicts no variance.
    var_interp: Optional[torch.Tensor] = None


def to_eps_x0(prediction: str, out: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> Prediction:
    """Convert a network output to (eps_hat, x0_hat) with x_t = sqrt(a) x0 + sqrt(1-a) eps."""
    return Prediction(*eps_x0_from_output(prediction, out, x_t, alpha_bar))


def dynamic_threshold(x0: torch.Tensor, p: float) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022, Imagen, sec. 2.3): s is the p-th percentile
    of |x0_hat| over each sample, floored at 1; x0_hat is clamped to [-s, s] and divided by s."""
    flat = x0.reshape(x0.shape[0], -1).abs()
    s = torch.quantile(flat, p / 100.0, dim=1).clamp(min=1.0)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


class Denoiser:
    """D(x, sigma, y) -> Prediction(eps_hat, x0_hat, var_interp), on EDM's scaled state.

    ``x`` is x_t / a at noise level ``sigma`` (processes.py: x / a = x_0 + sigma eps), for any
    process; the process turns (x, sigma) into the network's input and its output into x0_hat,
    and eps_hat = (x - x0_hat) / sigma. ``sigma`` is a float, a 0-d tensor or one level per row.

    ``guidance`` is the classifier-free guidance scale s: out = out_u + s (out_c - out_u) on the
    network's outputs, so s = 1 is the plain conditional model and s = 0 the unconditional one.
    ``clip_x0`` clamps x0_hat to [-c, c] (for images in [-1, 1]); ``dynamic_threshold`` p
    (a percentile, e.g. 99.5) applies Imagen's dynamic thresholding (before the clamp when
    both are given); eps_hat then follows the new x0_hat. The number of x0_hat values they
    changed is kept in ``clip_count``, out of ``x0_count`` values seen, for numerical-stability
    reports. A network with twice the channels of x (built with out_mult=2) also predicts the
    variance; its second half, in [-1, 1], becomes ``var_interp`` = (out + 1) / 2.

    ``process`` is a processes.Process; a schedules.Schedule stands for the DDPM process of that
    schedule with the given ``prediction``.

    ``second_noise(sigma, sigma_next)`` is given for a network that also reads where a jump ends
    (a few-step method's, methods.py): asked with ``sigma_next``, the denoiser answers for the
    jump from sigma to sigma_next (its x0_hat is the one a DDIM step to sigma_next follows).
    ``few_step`` holds the few-step sampler's defaults for this model (its method's ``sampling``:
    the noise refresh ``gamma``, the level ``sigma_max`` the first jump starts from).
    """

    def __init__(
        self,
        net: torch.nn.Module,
        process: Union[Process, Schedule],
        prediction: str = "eps",
        num_classes: int = 0,
        guidance: float = 1.0,
        clip_x0: float | None = None,
        dynamic_threshold: float | None = None,
        second_noise: Optional[Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]] = None,
        few_step: Optional[dict] = None,
    ):
        self.net = net
        self.process = DDPM(process, prediction) if isinstance(process, Schedule) else process
        self.num_classes = num_classes
        self.guidance = guidance
        self.clip_x0 = clip_x0
        self.dynamic_threshold = dynamic_threshold
        self.second_noise = second_noise
        self.few_step = few_step or {}
        self.nfe = 0
        self.clip_count = 0
        self.x0_count = 0

    def _net(self, x, sigma, y, sigma_next=None):
        self.nfe += 1
        x_in, c_noise = self.process.network_input(x, sigma)
        if self.second_noise is not None:
            c_noise = torch.stack([c_noise, self.second_noise(sigma, sigma_next).to(c_noise)], 1)
        dtype = next(self.net.parameters()).dtype
        return self.net(x_in.to(dtype), c_noise, y).to(x.dtype)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma, y: torch.Tensor | None = None, sigma_next=None) -> Prediction:
        sigma = _levels(sigma, x)
        sigma_next = None if sigma_next is None else _levels(sigma_next, x)
        if y is not None and self.guidance != 1.0:
            null = torch.full_like(y, self.num_classes)
            both = None if sigma_next is None else torch.cat([sigma_next, sigma_next])
            out = self._net(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([y, null]), both)
            out_c, out_u = out.chunk(2)
            out_c, var_interp = split_variance(out_c, x)
            out_u, _ = split_variance(out_u, x)
            out = out_u + self.guidance * (out_c - out_u)  # Ho & Salimans 2022, eq. 6
        else:
            out, var_interp = split_variance(self._net(x, sigma, y, sigma_next), x)
        x0 = self.process.x0_from_output(out, x, sigma)
        if self.clip_x0 is not None or self.dynamic_threshold is not None:
            x0_raw = x0
            if self.dynamic_threshold is not None:
                x0 = dynamic_threshold(x0, self.dynamic_threshold)
            if self.clip_x0 is not None:
                x0 = x0.clamp(-self.clip_x0, self.clip_x0)
            self.clip_count += int((x0 != x0_raw).sum())
            self.x0_count += x0.numel()
        s = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return Prediction((x - x0) / s, x0, var_interp)


def _levels(sigma, x: torch.Tensor) -> torch.Tensor:
    """A float, 0-d or (B,) noise level as (B,) float64 on x's device."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma
