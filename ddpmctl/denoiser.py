"""The denoiser: the only thing samplers call.

It wraps a network and its schedule and hides how the network is parameterised (eps, x0
or v) and how guidance is applied. Samplers ask it for eps_hat and x0_hat at x_t, t.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ddpmctl.diffusion import gather
from ddpmctl.schedules import Schedule


class Prediction(NamedTuple):
    eps: torch.Tensor  # eps_hat, shape of x_t
    x0: torch.Tensor  # x0_hat, shape of x_t


def to_eps_x0(prediction: str, out: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> Prediction:
    """Convert a network output to (eps_hat, x0_hat) with x_t = sqrt(a) x0 + sqrt(1-a) eps."""
    sa, s1a = alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()
    if prediction == "eps":
        eps = out
        x0 = (x_t - s1a * eps) / sa
    elif prediction == "x0":
        x0 = out
        eps = (x_t - sa * x0) / s1a
    elif prediction == "v":  # v = sqrt(a) eps - sqrt(1-a) x0  (Salimans & Ho 2022, sec. 4)
        x0 = sa * x_t - s1a * out
        eps = s1a * x_t + sa * out
    else:
        raise ValueError(f"unknown prediction {prediction!r}; known: eps, x0, v")
    return Prediction(eps, x0)


class Denoiser:
    """D(x_t, t, y) -> (eps_hat, x0_hat).

    ``guidance`` is the classifier-free guidance scale s: eps = eps_u + s (eps_c - eps_u),
    so s = 1 is the plain conditional model and s = 0 the unconditional one.
    ``clip_x0`` clamps x0_hat to [-c, c] (for images in [-1, 1]); the count of clamped
    values is kept in ``clip_count`` for numerical-stability reports.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        schedule: Schedule,
        prediction: str = "eps",
        num_classes: int = 0,
        guidance: float = 1.0,
        clip_x0: float | None = None,
    ):
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        self.num_classes = num_classes
        self.guidance = guidance
        self.clip_x0 = clip_x0
        self.nfe = 0
        self.clip_count = 0

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
            out = out_u + self.guidance * (out_c - out_u)  # Ho & Salimans 2022, eq. 6
        else:
            out = self._net(x_t, t, y)
        a = gather(self.schedule.alpha_bar, t, x_t)
        pred = to_eps_x0(self.prediction, out, x_t, a)
        if self.clip_x0 is not None:
            x0 = pred.x0.clamp(-self.clip_x0, self.clip_x0)
            self.clip_count += int((x0 != pred.x0).sum())
            pred = Prediction((x_t - a.sqrt() * x0) / (1.0 - a).sqrt(), x0)
        return pred
