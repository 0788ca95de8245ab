"""Tests of fmlib.models: shapes, time embedding, time and label validation, null label, per-sample independence."""

from __future__ import annotations

import math

import pytest
import torch

from fmlib.models import MLP, Autoencoder, SinusoidalTimeEmbedding, UNet


def test_time_embedding_values_at_known_t():
    emb = SinusoidalTimeEmbedding(4, max_freq=1000.0)          # frequencies 1 and 1000
    out = emb(torch.tensor([0.0, 0.5]))
    assert out.shape == (2, 4)
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    expected = torch.tensor([math.sin(0.5), math.sin(500.0), math.cos(0.5), math.cos(500.0)])
    torch.testing.assert_close(out[1], expected, atol=1e-4, rtol=0)


def test_time_embedding_frequencies_are_geometric_from_one_to_max_freq():
    emb = SinusoidalTimeEmbedding(8, max_freq=1000.0)
    torch.testing.assert_close(emb.freqs, torch.tensor([1.0, 10.0, 100.0, 1000.0]))


@pytest.mark.parametrize("max_freq", [1.0, 30.0, 1000.0])
def test_time_embedding_speed_in_t_is_the_root_sum_of_squared_frequencies(max_freq):
    # d/dt (sin ωt, cos ωt) = ω (cos ωt, −sin ωt) has norm ω, so ‖de/dt‖ = sqrt(Σ_j ω_j²) at every t:
    # the bound on how fast anything built on e(t) can vary in t, for a given network
    emb = SinusoidalTimeEmbedding(16, max_freq=max_freq)
    t = torch.linspace(0, 1, 7, dtype=torch.float64).requires_grad_()
    jac = torch.autograd.functional.jacobian(lambda s: emb(s).sum(0), t)   # [dim, 7]: row i is d e_i/dt
    speed = jac.norm(dim=0)
    omega = torch.tensor(max_freq, dtype=torch.float64) ** (torch.arange(8, dtype=torch.float64) / 7)
    torch.testing.assert_close(speed, omega.square().sum().sqrt().expand(7))


def test_default_time_embedding_suits_the_unit_interval():
    # t ∈ [0, 1]: the highest frequency makes a few tens of radians over the whole interval, not a thousand
    # (benchmarks/time_embedding.py measures why: max_freq 1000 lets trained fields wiggle in t)
    from fmlib.models import DEFAULT_MAX_FREQ

    assert 1.0 < DEFAULT_MAX_FREQ <= 100.0
    for model in (MLP(hidden=8, depth=1, time_dim=8), UNet(base_channels=8, time_dim=8)):
        emb = model.time_emb if isinstance(model, MLP) else model.time_emb[0]
        assert float(emb.freqs.max()) == pytest.approx(DEFAULT_MAX_FREQ)
    assert MLP(hidden=8, depth=1, max_freq=5.0).time_emb.max_freq == 5.0
    assert UNet(base_channels=8, time_dim=8, max_freq=5.0).time_emb[0].max_freq == 5.0


@pytest.mark.parametrize("dim", [0, 3, -2])
def test_time_embedding_rejects_bad_dim(dim):
    with pytest.raises(ValueError):
        SinusoidalTimeEmbedding(dim)


@pytest.mark.parametrize("num_classes", [None, 10])
@pytest.mark.parametrize("dim", [1, 2, 64])
def test_mlp_output_has_input_shape(dim, num_classes):
    model = MLP(dim=dim, hidden=32, depth=2, num_classes=num_classes)
    x = torch.randn(5, dim)
    y = torch.randint(0, 10, (5,)) if num_classes else None
    assert model(x, torch.rand(5), y).shape == (5, dim)


def test_mlp_accepts_float_0d_1_and_batched_time_alike():
    torch.manual_seed(0)
    model = MLP(hidden=32, depth=2)
    x = torch.randn(4, 2)
    ref = model(x, torch.full((4,), 0.3))
    for t in (0.3, torch.tensor(0.3), torch.tensor([0.3])):
        torch.testing.assert_close(model(x, t), ref)


@pytest.mark.parametrize("t", [-0.1, 1.5, float("nan")])
def test_time_outside_unit_interval_raises(t):
    with pytest.raises(ValueError):
        MLP(hidden=16, depth=1)(torch.randn(3, 2), t)
    with pytest.raises(ValueError):
        UNet(base_channels=8, time_dim=16)(torch.randn(3, 1, 8, 8), t)


def test_time_with_wrong_batch_size_raises():
    with pytest.raises(ValueError, match="shape"):
        MLP(hidden=16, depth=1)(torch.randn(3, 2), torch.rand(4))


def test_mlp_wrong_input_shape_raises():
    model = MLP(dim=2, hidden=16, depth=1)
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        model(torch.randn(3, 3), 0.5)
    with pytest.raises(ValueError):
        model(torch.randn(3), 0.5)
    with pytest.raises(TypeError):
        model(torch.ones(3, 2, dtype=torch.long), 0.5)


def test_labels_on_unconditional_model_raise():
    with pytest.raises(ValueError, match="unconditional"):
        MLP(hidden=16, depth=1)(torch.randn(3, 2), 0.5, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="unconditional"):
        UNet(base_channels=8, time_dim=16)(torch.randn(3, 1, 8, 8), 0.5, torch.zeros(3, dtype=torch.long))


def test_null_label_is_num_classes_and_none_for_unconditional():
    assert MLP(num_classes=10).null_label == 10
    assert MLP().null_label is None
    assert UNet(base_channels=8, num_classes=3).null_label == 3
    assert UNet(base_channels=8).null_label is None


def test_missing_labels_mean_the_null_label():
    torch.manual_seed(0)
    for model, x in ((MLP(hidden=16, depth=2, num_classes=4), torch.randn(3, 2)),
                     (UNet(base_channels=8, time_dim=16, num_classes=4), torch.randn(3, 1, 8, 8))):
        torch.nn.init.normal_(model.label_emb.weight)
        if isinstance(model, UNet):                      # the output conv starts at zero: give it weights
            torch.nn.init.normal_(model.conv_out.weight, std=0.1)
        null = torch.full((3,), 4)
        torch.testing.assert_close(model(x, 0.5), model(x, 0.5, null))
        assert not torch.allclose(model(x, 0.5, torch.zeros(3, dtype=torch.long)), model(x, 0.5, null))


@pytest.mark.parametrize("bad", [torch.tensor([0, 1, 5]), torch.tensor([-1, 0, 0]), torch.zeros(3),
                                 torch.zeros(2, dtype=torch.long)])
def test_bad_labels_raise(bad):
    with pytest.raises(ValueError):
        MLP(hidden=16, depth=1, num_classes=4)(torch.randn(3, 2), 0.5, bad)


@pytest.mark.parametrize("num_classes", [None, 10])
def test_unet_8x8_output_shape(num_classes):
    model = UNet(base_channels=16, channel_mults=(1, 2), time_dim=32, num_classes=num_classes)
    y = torch.randint(0, 11, (4,)) if num_classes else None
    assert model(torch.randn(4, 1, 8, 8), torch.rand(4), y).shape == (4, 1, 8, 8)


@pytest.mark.parametrize("num_classes", [None, 10])
def test_unet_28x28_output_shape(num_classes):
    model = UNet(base_channels=8, channel_mults=(1, 2, 2), time_dim=16, num_classes=num_classes)
    y = torch.randint(0, 10, (2,)) if num_classes else None
    assert model(torch.randn(2, 1, 28, 28), 0.7, y).shape == (2, 1, 28, 28)


def test_unet_multi_channel_and_two_res_blocks():
    model = UNet(in_channels=3, base_channels=8, channel_mults=(1, 2), num_res_blocks=2, time_dim=16, dropout=0.1)
    assert model(torch.randn(2, 3, 8, 8), 0.2).shape == (2, 3, 8, 8)


def test_unet_rejects_wrong_channels_and_indivisible_size():
    model = UNet(base_channels=8, channel_mults=(1, 2, 2), time_dim=16)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(2, 1, 10, 10), 0.5)
    with pytest.raises(ValueError, match=r"\[B, 1"):
        model(torch.randn(2, 3, 8, 8), 0.5)
    with pytest.raises(ValueError):
        model(torch.randn(1, 8, 8), 0.5)


def test_unet_starts_at_zero_and_gets_gradients_everywhere():
    model = UNet(base_channels=8, time_dim=16, num_classes=2)
    x = torch.randn(3, 1, 8, 8)
    assert torch.count_nonzero(model(x, 0.5)) == 0
    torch.nn.init.normal_(model.conv_out.weight, std=0.1)
    model(x, torch.rand(3), torch.tensor([0, 1, 2])).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("make", [lambda: (MLP(hidden=16, depth=2), (2,)),
                                  lambda: (UNet(base_channels=8, time_dim=16), (1, 8, 8))])
def test_each_output_depends_only_on_its_own_sample(make):
    torch.manual_seed(0)
    model, shape = make()
    if isinstance(model, UNet):
        torch.nn.init.normal_(model.conv_out.weight, std=0.1)
    x = torch.randn(3, *shape)
    out = model(x, torch.tensor([0.1, 0.5, 0.9]))
    x2 = x.clone()
    x2[1] += 1.0
    out2 = model(x2, torch.tensor([0.1, 0.5, 0.9]))
    torch.testing.assert_close(out2[[0, 2]], out[[0, 2]])
    assert not torch.allclose(out2[1], out[1])


@pytest.mark.parametrize("size", [8, 28])
def test_autoencoder_shapes(size):
    ae = Autoencoder(image_size=size, latent_dim=6, base_channels=8)
    x = torch.randn(3, 1, size, size)
    z = ae.encode(x)
    assert z.shape == (3, 6)
    assert ae.decode(z).shape == x.shape
    assert ae(x).shape == x.shape


def test_autoencoder_rejects_wrong_shapes():
    ae = Autoencoder(image_size=8, latent_dim=4, base_channels=8)
    with pytest.raises(ValueError):
        ae.encode(torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError):
        ae.decode(torch.randn(2, 5))
