"""The forward process and the training objective (pure torch)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ddpmctl.schedules import Schedule


def gather(coef: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """coef[t] broadcast to like's shape (B, 1, 1, ...), in like's dtype and device."""
    out = coef.to(like.device)[t].to(like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)  (DDPM eq. 4)."""
    a = gather(schedule.alpha_bar, t, x0)
    return a.sqrt() * x0 + (1.0 - a).sqrt() * eps


def q_posterior(schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """Mean and variance of q(x_{t-1} | x_t, x_0)  (DDPM eqs. 6-7)."""
    mean = gather(schedule.posterior_mean_coef1, t, x_t) * x0 + gather(schedule.posterior_mean_coef2, t, x_t) * x_t
    return mean, gather(schedule.beta_tilde, t, x_t)


def target(prediction: str, schedule: Schedule, x0, eps, t) -> torch.Tensor:
    """What the network is trained to output: eps, x0, or v = sqrt(a) eps - sqrt(1-a) x0
    (Salimans & Ho 2022)."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        a = gather(schedule.alpha_bar, t, x0)
        return a.sqrt() * eps - (1.0 - a).sqrt() * x0
    raise ValueError(f"unknown prediction {prediction!r}; known: eps, x0, v")


def eps_x0_from_output(prediction: str, out: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor):
    """(eps_hat, x0_hat) from a network output, with x_t = sqrt(a) x0 + sqrt(1-a) eps, a = alpha_bar_t."""
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
    return eps, x0


def min_snr_weight(prediction: str, snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023, eq. 8 and sec. 3.4), per example.

    The weight of the x0 loss is min(SNR_t, gamma), SNR_t = alpha_bar_t / (1 - alpha_bar_t); the
    same weighting expressed for the network's own target: ||eps - eps_hat||^2 = SNR_t
    ||x0 - x0_hat||^2, so eps-prediction gets min(SNR_t, gamma) / SNR_t, and
    ||v - v_hat||^2 = (SNR_t + 1) ||x0 - x0_hat||^2, so v-prediction gets min(SNR_t, gamma) / (SNR_t + 1).
    """
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "x0":
        return clipped
    if prediction == "v":
        return clipped / (snr + 1.0)
    raise ValueError(f"unknown prediction {prediction!r}; known: eps, x0, v")


class DiffusionLoss:
    """L_simple of DDPM Algorithm 1: E_{t, x_0, eps} || target - net(x_t, t) ||^2, or with
    ``snr_gamma`` the min-SNR-gamma weighted loss E_t w_t || target - net(x_t, t) ||^2
    (Hang et al. 2023; ``min_snr_weight``).

    With ``p_uncond`` > 0, labels are replaced by the null label (index ``num_classes``)
    with that probability, which trains the unconditional model that classifier-free
    guidance needs (Ho & Salimans 2022).
    """

    def __init__(self, schedule: Schedule, prediction: str = "eps", p_uncond: float = 0.0, num_classes: int = 0,
                 snr_gamma: float | None = None):
        self.schedule = schedule
        self.prediction = prediction
        self.p_uncond = p_uncond
        self.num_classes = num_classes
        self.snr_gamma = snr_gamma

    def mse(self, out: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The mean squared error of ``out`` against the target, min-SNR weighted per example when asked."""
        goal = target(self.prediction, self.schedule, x0, eps, t).float()
        if self.snr_gamma is None:
            return F.mse_loss(out.float(), goal)
        err = (out.float() - goal) ** 2
        a = self.schedule.alpha_bar.to(x0.device)[t]
        w = min_snr_weight(self.prediction, a / (1.0 - a), self.snr_gamma).float()  # (B,)
        return (w * err.reshape(err.shape[0], -1).mean(dim=1)).mean()

    def draw(self, x0: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator):
        """t ~ U{0..T-1}, eps ~ N(0, I), x_t ~ q(x_t | x_0), and the labels with some dropped."""
        B = x0.shape[0]
        t = torch.randint(0, self.schedule.T, (B,), device=x0.device, generator=generator)
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = q_sample(self.schedule, x0, t, eps)
        if y is not None and self.p_uncond > 0:
            drop = torch.rand(B, device=x0.device, generator=generator) < self.p_uncond
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return t, eps, x_t, y

    def __call__(self, net, x0: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        t, eps, x_t, y = self.draw(x0, y, generator)
        return self.mse(net(x_t, t, y), x0, eps, t)


def split_variance(out: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A network output of x_t's shape is (out, None); one with twice x_t's channels is (mean
    output, v) along dim 1, its second half in [-1, 1] mapped to v in [0, 1] (Nichol & Dhariwal 2021)."""
    if out.shape == x_t.shape:
        return out, None
    if out.shape[1] == 2 * x_t.shape[1] and out.shape[2:] == x_t.shape[2:]:
        mean_out, var_out = out.chunk(2, dim=1)
        return mean_out, (var_out + 1.0) / 2.0
    raise ValueError(f"network output of shape {tuple(out.shape)} fits neither x_t {tuple(x_t.shape)} nor twice its channels")


def learned_log_variance(v: torch.Tensor, log_beta: torch.Tensor, log_beta_tilde: torch.Tensor) -> torch.Tensor:
    """log Sigma = v log beta_t + (1 - v) log beta-tilde_t  (Nichol & Dhariwal 2021, eq. 15)."""
    return v * log_beta + (1.0 - v) * log_beta_tilde


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / 2**0.5))


def discretized_gaussian_nll(x0: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """-log p(x_0 | x_1) for 8-bit data in [-1, 1]: the Gaussian's mass over each pixel's bin of
    width 2/255, with the edge bins open (DDPM eq. 13). Elementwise, in nats."""
    std_inv = torch.exp(-0.5 * log_var)
    cdf_plus = _std_normal_cdf(std_inv * (x0 - mean + 1.0 / 255))
    cdf_min = _std_normal_cdf(std_inv * (x0 - mean - 1.0 / 255))
    mass = torch.where(x0 < -0.999, cdf_plus, torch.where(x0 > 0.999, 1.0 - cdf_min, cdf_plus - cdf_min))
    return -torch.log(mass.clamp(min=1e-12))


def gaussian_nll(x0: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """-log N(x_0; mean, e^log_var) for continuous data (2-D points). Elementwise, in nats."""
    return 0.5 * (math.log(2 * math.pi) + log_var + (x0 - mean) ** 2 * torch.exp(-log_var))


class HybridLoss(DiffusionLoss):
    """L_hybrid = L_simple + lambda L_vlb for a network that also predicts the variance
    (Nichol & Dhariwal 2021, sec. 3.1, lambda = 0.001).

    The network's output has twice the channels of x_0: the first half is trained by L_simple
    (eps, x0 or v), the second half v in [-1, 1] sets log Sigma by eq. 15. The L_vlb term at
    the sampled t is KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 1 and -log p(x_0 | x_1)
    at t = 1 (DDPM eq. 5), in bits per dimension; the mean of p uses a stop-gradient on the
    network's mean output, so L_vlb trains only the variance (sec. 3.1). L_vlb is the sum over
    the T steps, estimated as T times the term at a uniform t, hence the factor T below.
    ``decoder`` is the t = 1 term: "discretized" (DDPM eq. 13, for 8-bit images) or "gaussian"
    (a continuous Gaussian density, for 2-D points, where there are no bins).
    """

    def __init__(self, schedule: Schedule, prediction: str = "eps", p_uncond: float = 0.0, num_classes: int = 0,
                 vlb_weight: float = 0.001, decoder: str = "gaussian", snr_gamma: float | None = None):
        super().__init__(schedule, prediction, p_uncond, num_classes, snr_gamma)
        if decoder not in ("discretized", "gaussian"):
            raise ValueError(f"unknown decoder {decoder!r}; known: discretized, gaussian")
        self.vlb_weight = vlb_weight
        self.decoder = decoder

    def __call__(self, net, x0: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        t, eps, x_t, y = self.draw(x0, y, generator)
        out = net(x_t, t, y)
        mean_out, v = split_variance(out.float(), x_t)
        if v is None:
            raise ValueError(f"learned variance needs a network built with out_mult=2; its output has shape {tuple(out.shape)}")
        l_simple = self.mse(mean_out, x0, eps, t)
        return l_simple + self.vlb_weight * self.schedule.T * self.vlb_term(mean_out.detach(), v, x0.float(), x_t.float(), t).mean()

    def vlb_term(self, mean_out, v, x0, x_t, t) -> torch.Tensor:
        """L_{t-1} per example, in bits per dimension (shape (B,)); ``v`` in [0, 1] as split_variance gives it."""
        s = self.schedule
        _, x0_hat = eps_x0_from_output(self.prediction, mean_out, x_t, gather(s.alpha_bar, t, x_t))
        mean_p, _ = q_posterior(s, x0_hat, x_t, t)  # mu_theta = mu-tilde(x_t, x0_hat)
        log_beta_tilde = gather(s.log_beta_tilde_clipped, t, x_t)
        log_var_p = learned_log_variance(v, gather(s.log_beta, t, x_t), log_beta_tilde)  # N&D eq. 15
        mean_q, _ = q_posterior(s, x0, x_t, t)
        kl = normal_kl(mean_q, log_beta_tilde, mean_p, log_var_p)
        nll = (discretized_gaussian_nll if self.decoder == "discretized" else gaussian_nll)(x0, mean_p, log_var_p)
        term = torch.where((t == 0).reshape(-1, *([1] * (x0.ndim - 1))), nll, kl)  # DDPM eq. 5: L_0 at t = 1, else L_{t-1}
        return term.reshape(term.shape[0], -1).mean(dim=1) / math.log(2.0)
