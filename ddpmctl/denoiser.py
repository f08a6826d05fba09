"""The denoiser: the only thing samplers call.

It wraps a network and its schedule and hides how the network is parameterised (eps, x0
or v) and how guidance is applied. Samplers ask it for eps_hat and x0_hat at x_t, t.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ddpmctl.diffusion import eps_x0_from_output, gather, split_variance
from ddpmctl.schedules import Schedule


class Prediction(NamedTuple):
    eps: torch.Tensor  # eps_hat, shape of x_t
    x0: torch.Tensor  # x0_hat, shape of x_t
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
    """D(x_t, t, y) -> Prediction(eps_hat, x0_hat, var_interp).

    ``guidance`` is the classifier-free guidance scale s: eps = eps_u + s (eps_c - eps_u),
    so s = 1 is the plain conditional model and s = 0 the unconditional one.
    ``clip_x0`` clamps x0_hat to [-c, c] (for images in [-1, 1]); ``dynamic_threshold`` p
    (a percentile, e.g. 99.5) applies Imagen's dynamic thresholding (before the clamp when
    both are given); eps_hat is then recomputed from the new x0_hat. The number of x0_hat
    values they changed is kept in ``clip_count``, out of ``x0_count`` values seen, for
    numerical-stability reports.
    A network with twice the channels of x_t (built with out_mult=2) also predicts the
    variance; its second half, in [-1, 1], becomes ``var_interp`` = (out + 1) / 2.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        schedule: Schedule,
        prediction: str = "eps",
        num_classes: int = 0,
        guidance: float = 1.0,
        clip_x0: float | None = None,
        dynamic_threshold: float | None = None,
    ):
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        self.num_classes = num_classes
        self.guidance = guidance
        self.clip_x0 = clip_x0
        self.dynamic_threshold = dynamic_threshold
        self.nfe = 0
        self.clip_count = 0
        self.x0_count = 0

    def _net(self, x_t, t, y):
        self.nfe += 1
        dtype = next(self.net.parameters()).dtype
        return self.net(x_t.to(dtype), t, y).to(x_t.dtype)

    @torch.no_grad()
    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> Prediction:
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        if y is not None and self.guidance != 1.0:
            null = torch.full_like(y, self.num_classes)
            out = self._net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))
            out_c, out_u = out.chunk(2)
            out_c, var_interp = split_variance(out_c, x_t)
            out_u, _ = split_variance(out_u, x_t)
            out = out_u + self.guidance * (out_c - out_u)  # Ho & Salimans 2022, eq. 6
        else:
            out, var_interp = split_variance(self._net(x_t, t, y), x_t)
        a = gather(self.schedule.alpha_bar, t, x_t)
        eps, x0 = eps_x0_from_output(self.prediction, out, x_t, a)
        if self.clip_x0 is not None or self.dynamic_threshold is not None:
            x0_raw = x0
            if self.dynamic_threshold is not None:
                x0 = dynamic_threshold(x0, self.dynamic_threshold)
            if self.clip_x0 is not None:
                x0 = x0.clamp(-self.clip_x0, self.clip_x0)
            self.clip_count += int((x0 != x0_raw).sum())
            self.x0_count += x0.numel()
            eps = (x_t - a.sqrt() * x0) / (1.0 - a).sqrt()  # eps consistent with the clipped x0_hat
        return Prediction(eps, x0, var_interp)
