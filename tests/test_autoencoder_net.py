"""The KL autoencoder (latent diffusion's AutoencoderKL): shapes, the KL term, refusals, and that it learns to reconstruct."""

import pytest
import torch
import torch.nn.functional as F

from ddpmctl import registry
from ddpmctl.autoencoders.kl import LOGVAR_MAX, LOGVAR_MIN, KLAutoencoder, kl_divergence
from ddpmctl.testing import refusals

SMALL = {"channels": 8, "num_res_blocks": 1, "latent_channels": 4, "norm_groups": 4}


def _images(shape, B=3, seed=1):
    return torch.randn(B, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 16)])
@pytest.mark.parametrize("mult, f", [((1, 2), 2), ((1, 2, 2), 4)])
@pytest.mark.parametrize("attention", [False, True])
def test_encode_decode_forward_shapes(shape, mult, f, attention):
    ae = KLAutoencoder(**SMALL, channel_mult=mult, attention=attention, data_shape=shape)
    _, H, W = shape
    assert ae.factor == f and ae.latent_shape == (4, H // f, W // f)
    x = _images(shape)
    mean, logvar = ae.encode(x)
    assert mean.shape == logvar.shape == (3, *ae.latent_shape)
    assert ae.decode(mean).shape == x.shape
    x_hat, kl = ae(x, torch.randn(3, *ae.latent_shape))
    assert x_hat.shape == x.shape and kl.shape == (3,)
    (x_hat.square().mean() + kl.mean()).backward()
    assert all(p.grad is not None for p in ae.parameters()), "every parameter must get a gradient"


def test_resolves_by_name_with_ldm_f4_defaults():
    ae = registry.build("autoencoder", "kl", {}, data_shape=(3, 32, 32))
    assert isinstance(ae, KLAutoencoder)
    assert ae.latent_shape == (4, 8, 8) and ae.factor == 4


def test_kl_divergence_matches_the_closed_form():
    zero = torch.zeros(2, 4, 2, 2)
    assert torch.equal(kl_divergence(zero, zero), torch.zeros(2))
    # One latent dimension off the prior: mean 1, var e -> 0.5 (1 + e - 1 - 1) = 0.5 (e - 1).
    mean, logvar = zero.clone(), zero.clone()
    mean[1, 0, 0, 0], logvar[1, 0, 0, 0] = 1.0, 1.0
    assert torch.allclose(kl_divergence(mean, logvar), torch.tensor([0.0, 0.5 * (torch.e - 1)]))
    g = torch.Generator().manual_seed(0)
    mean, logvar = 3 * torch.randn(64, 4, 2, 2, generator=g), 5 * torch.randn(64, 4, 2, 2, generator=g)
    assert (kl_divergence(mean, logvar) >= 0).all()


def test_forward_is_the_reparameterised_draw_and_its_kl(monkeypatch):
    ae = KLAutoencoder(**SMALL, channel_mult=(1, 2), data_shape=(1, 8, 8)).eval()
    x, noise = _images((1, 8, 8)), torch.randn(3, 4, 4, 4)
    mean, logvar = ae.encode(x)
    x_hat, kl = ae(x, noise)
    assert torch.allclose(x_hat, ae.decode(mean + (0.5 * logvar).exp() * noise), atol=1e-6)
    assert torch.allclose(kl, kl_divergence(mean, logvar))
    # With a posterior equal to the prior, the KL term is zero.
    monkeypatch.setattr(ae, "encode", lambda x: (torch.zeros(3, 4, 4, 4), torch.zeros(3, 4, 4, 4)))
    assert torch.equal(ae(x, noise)[1], torch.zeros(3))


def test_logvar_is_clamped():
    ae = KLAutoencoder(**SMALL, channel_mult=(1, 2), data_shape=(1, 8, 8))
    with torch.no_grad():
        ae.encoder.conv_out.bias[4:] = 1e3  # the log-variance half
        assert (ae.encode(_images((1, 8, 8)))[1] == LOGVAR_MAX).all()
        ae.encoder.conv_out.bias[4:] = -1e3
        assert (ae.encode(_images((1, 8, 8)))[1] == LOGVAR_MIN).all()


def test_same_input_same_output():
    torch.manual_seed(0)
    ae = KLAutoencoder(**SMALL, channel_mult=(1, 2), attention=True, data_shape=(3, 8, 8)).eval()
    x, noise = _images((3, 8, 8)), torch.randn(3, 4, 4, 4)
    a, b = ae(x, noise), ae(x, noise)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # The rows of a batch are independent.
    assert torch.allclose(ae(x[:1], noise[:1])[0], a[0][:1], atol=1e-5)


def test_refuses_points_and_sizes_f_does_not_divide():
    points, odd = refusals(
        lambda: KLAutoencoder(data_shape=(2,)),
        lambda: registry.build("autoencoder", "kl", {"channel_mult": (1, 2, 2, 2)}, data_shape=(1, 12, 12)),
    )
    assert "images" in points and "(2,)" in points
    assert "f = 8" in odd and "12x12" in odd and "shorter channel_mult" in odd


def _smooth_images(n: int, side: int, seed: int) -> torch.Tensor:
    """Low-pass filtered noise: white noise blurred by a 3x3 box twice, scaled to unit std."""
    x = torch.randn(n, 1, side, side, generator=torch.Generator().manual_seed(seed))
    box = torch.full((1, 1, 3, 3), 1 / 9)
    for _ in range(2):
        x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), box)
    return x / x.std()


def test_learns_to_reconstruct_smooth_images():
    torch.manual_seed(0)
    ae = KLAutoencoder(**SMALL, channel_mult=(1, 2), data_shape=(1, 8, 8))
    x = _smooth_images(16, 8, seed=2)
    g = torch.Generator().manual_seed(3)
    opt = torch.optim.Adam(ae.parameters(), 3e-3)

    def mse() -> float:
        with torch.no_grad():
            return (ae.decode(ae.encode(x)[0]) - x).square().mean().item()

    first = mse()
    for _ in range(150):
        x_hat, kl = ae(x, torch.randn(16, *ae.latent_shape, generator=g))
        loss = (x_hat - x).square().mean() + 1e-6 * kl.mean()  # a light KL weight, as in LDM
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert mse() < first / 10, f"reconstruction MSE went from {first:.3g} to {mse():.3g}"
