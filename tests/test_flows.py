"""Invertible layers: exact round trips, log-determinants against autograd Jacobians, ActNorm state, 1x1 cache.

Every layer is tested with ALL its parameters perturbed (zero-initialised convs and ActNorms
included): at initialisation couplings, injectors and split priors are (near) identities, so a
round-trip test on fresh layers would pass even with a wrong inverse.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from upscale_cli.flows import (
    ActNorm,
    AdditiveCoupling,
    AffineInjector,
    ConditionalAffineCoupling,
    FlowLevel,
    FlowSequence,
    FlowStep,
    InvertibleConv1x1,
    InvertibleLayer,
    LayerParamNet,
    LUInvertibleConv1x1,
    MultiScaleFlow,
    ParamNet,
    Split,
    Squeeze,
    ZeroConv2d,
    param_net,
    param_nets_in,
    set_param_net_dtype,
    standard_normal_log_prob,
    transition_step,
)
from upscale_cli.flows.layers import SCALE_FLOOR, affine_scale, gaussian_log_prob

C, COND = 4, 3


pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def perturb(module: nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Add Gaussian noise to every parameter, so no layer is an identity and no conv is zero.

    0.05 keeps the affine scales well inside (1e-4, 1]: at 0.2 they reach the 1e-4 floor and float32
    round trips through a few steps lose ~1e-2, a conditioning effect (the float64 Jacobian tests
    below show the algebra is exact), not a bug.
    """
    generator = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def prepared(factory: Callable[[], InvertibleLayer], x: torch.Tensor, cond: torch.Tensor | None,
             seed: int = 0) -> InvertibleLayer:
    """A layer whose ActNorms were initialised on `x` and whose parameters were then all perturbed."""
    torch.manual_seed(seed)
    layer = factory().train()
    with torch.no_grad():
        layer(x, cond)
    perturb(layer, seed=seed)
    return layer


LAYERS: dict[str, tuple[Callable[[], InvertibleLayer], bool]] = {
    # name: (factory, uses a condition)
    "actnorm": (lambda: ActNorm(C), False),
    "conv1x1": (lambda: InvertibleConv1x1(C), False),
    "injector": (lambda: AffineInjector(C, COND, 8), True),
    "coupling": (lambda: ConditionalAffineCoupling(C, COND, 8), True),
    "coupling_unconditional": (lambda: ConditionalAffineCoupling(C, 0, 8), False),
    "squeeze": (lambda: Squeeze(), False),
    "transition": (lambda: transition_step(C), False),
    "flowstep": (lambda: FlowStep(C, COND, 8), True),
    "flowstep_glow": (lambda: FlowStep(C, 0, 8), False),
    "sequence": (lambda: FlowSequence([FlowStep(C, COND, 8), transition_step(C), FlowStep(C, COND, 8)]), True),
    "conv1x1_lu": (lambda: LUInvertibleConv1x1(C), False),
    "additive": (lambda: AdditiveCoupling(C, net=lambda i, o: ZeroConv2d(i, o, pad_value=1.0)), False),
    "additive_conditional": (lambda: AdditiveCoupling(C, net=param_net(8), cond_channels=COND), True),
    "coupling_pluggable": (lambda: ConditionalAffineCoupling(
        C, 0, net=lambda i, o: ZeroConv2d(i, o, pad_value=1.0), scale_fn=lambda raw: torch.sigmoid(raw) + 0.5), False),
    "split": (lambda: Split(C), False),
    "glow_step": (lambda: FlowSequence([ActNorm(C), LUInvertibleConv1x1(C), AdditiveCoupling(
        C, net=lambda i, o: nn.Sequential(nn.Conv2d(i, 8, 3, padding=1), nn.ReLU(), ZeroConv2d(8, o, pad_value=1.0)))]),
        False),
}
VOLUME_PRESERVING = {"squeeze", "additive", "additive_conditional"}  # logdet exactly 0 by construction


def inputs(batch: int, size: int, conditioned: bool, dtype: torch.dtype = torch.float32, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, C, size, size, generator=generator) * 1.5 + 0.3).to(dtype)
    cond = torch.randn(batch, COND, size, size, generator=generator).to(dtype) if conditioned else None
    return x, cond


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_round_trip_and_logdets_cancel(name: str, mode: str) -> None:
    factory, conditioned = LAYERS[name]
    x, cond = inputs(3, 6, conditioned)
    layer = prepared(factory, x, cond)
    layer.train(mode == "train")
    with torch.no_grad():
        z, logdet = layer(x, cond)
        back, logdet_back = layer.reverse(z, cond)
    assert logdet.shape == (3,) and logdet.dtype == torch.float32
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()
    torch.testing.assert_close(back, x, atol=1e-4, rtol=0)
    tolerance = 1e-4 * (1 + logdet.abs().max().item())
    torch.testing.assert_close(logdet + logdet_back, torch.zeros(3), atol=tolerance, rtol=0)
    if name != "squeeze":
        assert (z - x).abs().max() > 1e-2, "the layer is (nearly) the identity: the test would prove nothing"
        if name in VOLUME_PRESERVING:
            assert torch.equal(logdet, torch.zeros(3))
        else:
            assert logdet.abs().max() > 1e-3, "a zero logdet would hide a missing Jacobian term"


def test_split_round_trip_and_prior_accounting() -> None:
    x, _ = inputs(2, 6, False)
    split = prepared(lambda: Split(C), x, None)
    z, logdet = split(x)
    assert z.shape == x.shape  # the kept channels, then the standardised ones
    z1, eps = z[:, : C - C // 2], z[:, C - C // 2 :]
    torch.testing.assert_close(z1, x[:, : C - C // 2], atol=0, rtol=0)
    back, logdet_back = split.reverse(z)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(logdet + logdet_back, torch.zeros(2), atol=1e-4, rtol=0)
    # logdet + log N(eps; 0, I) is the spec's log N(z2; mu, sigma^2)
    mean, log_std = split.prior_params(z1)
    expected = gaussian_log_prob(x[:, C - C // 2 :], mean, log_std)
    torch.testing.assert_close(logdet + standard_normal_log_prob(eps), expected, atol=1e-3, rtol=1e-5)


def test_split_draws_eps_at_temperature() -> None:
    x, _ = inputs(2, 6, False)
    split = prepared(lambda: Split(C), x, None)
    z1 = split(x)[0][:, : C - C // 2]
    mean, _ = split.prior_params(z1)

    def decoded(tau: float, seed: int) -> torch.Tensor:
        eps = split.draw(z1, tau, torch.Generator().manual_seed(seed))
        assert eps.shape == (2, C // 2, 6, 6)
        return split.reverse(torch.cat([z1, eps], 1))[0]

    torch.testing.assert_close(decoded(0.0, 0)[:, C - C // 2 :], mean)
    a, b, c = decoded(0.8, 5), decoded(0.8, 5), decoded(0.8, 6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="channels"):
        split.reverse(torch.zeros(2, C - 1, 6, 6))


# --- log-determinants against autograd Jacobians (float64) ----------------------------------------


def jacobian_logdet(function: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    matrix = jacobian(lambda flat: function(flat.view_as(x)).flatten(), x.flatten())
    assert matrix.shape[0] == matrix.shape[1]
    sign, logabsdet = torch.linalg.slogdet(matrix)
    assert sign != 0
    return logabsdet.item()


@pytest.mark.parametrize("name", list(LAYERS))
def test_logdet_matches_autograd_jacobian(name: str) -> None:
    factory, conditioned = LAYERS[name]
    x, cond = inputs(1, 4, conditioned, dtype=torch.float64)
    layer = prepared(lambda: factory().double(), x, cond).eval()
    _, logdet = layer(x, cond)
    assert logdet.dtype == torch.float64
    expected = jacobian_logdet(lambda v: layer(v, cond)[0], x)
    assert logdet.item() == pytest.approx(expected, abs=1e-8, rel=1e-9)
    _, reverse_logdet = layer.reverse(layer(x, cond)[0], cond)
    assert reverse_logdet.item() == pytest.approx(-expected, abs=1e-8, rel=1e-9)


def test_zero_conv_pads_with_its_pad_value() -> None:
    """With all weights 1 and a zero input, each output counts the padded positions its 3x3 window covers."""
    for pad_value, corner, edge in ((1.0, 5.0, 3.0), (0.0, 0.0, 0.0)):
        conv = ZeroConv2d(2, 1, pad_value=pad_value)
        with torch.no_grad():
            conv.conv.weight.fill_(1.0)
        out = conv(torch.zeros(1, 2, 4, 5))[0, 0]
        assert out[0, 0].item() == 2 * corner and out[0, 2].item() == 2 * edge and out[2, 2].item() == 0.0


def test_lu_conv_is_the_matrix_its_factors_give_and_its_logdet_is_free() -> None:
    layer = LUInvertibleConv1x1(C).double()
    perturb(layer)
    matrix = layer.matrix(torch.float64)
    assert torch.linalg.slogdet(matrix)[1].item() == pytest.approx(layer.log_s.sum().item(), abs=1e-10)
    x = torch.randn(2, C, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(layer(x)[0], torch.einsum("oc,bchw->bohw", matrix, x))


def multiscale(split: bool) -> MultiScaleFlow:
    """Two levels of an unconditional flow (ArtFlow's shape without splits, Glow's with one)."""
    def net(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, 8, 3, padding=1), nn.ReLU(), ZeroConv2d(8, o, pad_value=1.0))

    levels, channels = [], 3
    for index in range(2):
        squeezed = 4 * channels
        level = FlowLevel(squeezed, [], [FlowSequence([ActNorm(squeezed), LUInvertibleConv1x1(squeezed),
                                                       AdditiveCoupling(squeezed, net)]) for _ in range(2)],
                          split=split and index == 0)
        levels.append(level)
        channels = level.out_channels
    return MultiScaleFlow(levels)


@pytest.mark.parametrize("split", [False, True])
def test_multiscale_container_inverts_and_draws_missing_latents(split: bool) -> None:
    flow = multiscale(split).train()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        flow(x)
    perturb(flow)
    flow.eval()
    with torch.no_grad():
        latents, logdet = flow(x)
        back, logdet_back = flow.reverse(latents)
    assert len(latents) == (2 if split else 1) and latents[-1].shape == ((2, 24, 2, 2) if split else (2, 48, 2, 2))
    torch.testing.assert_close(back, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(logdet + logdet_back, torch.zeros(2), atol=1e-4, rtol=0)
    if split:
        with torch.no_grad():
            drawn = [flow.reverse([None, latents[-1]], tau=0.7, generator=torch.Generator().manual_seed(s))[0]
                     for s in (1, 1, 2)]
        assert torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[0], drawn[2])
        with pytest.raises(ValueError, match="latent tensors"):
            flow.reverse([latents[-1]])


# --- ActNorm ------------------------------------------------------------------------------------------


def test_actnorm_initialises_once_from_the_first_training_batch() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, C, 5, 5, generator=generator) * torch.tensor([0.5, 2.0, 3.0, 0.1])[None, :, None, None]
    x = x + torch.tensor([1.0, -2.0, 0.0, 5.0])[None, :, None, None]
    layer = ActNorm(C).train()
    assert not layer.is_initialized
    y, _ = layer(x)
    assert layer.is_initialized
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(C), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3), correction=0), torch.ones(C), atol=1e-4, rtol=0)
    bias, logs = layer.bias.detach().clone(), layer.logs.detach().clone()
    layer(x * 3 + 1)  # a second training batch does not re-initialise
    assert torch.equal(layer.bias, bias) and torch.equal(layer.logs, logs)

    state = layer.state_dict()
    assert "initialized" in state and bool(state["initialized"])
    reloaded = ActNorm(C)
    reloaded.load_state_dict(state)
    assert reloaded.is_initialized
    reloaded.train()(torch.randn(4, C, 3, 3) * 7)
    assert torch.equal(reloaded.bias, bias) and torch.equal(reloaded.logs, logs)


def test_actnorm_never_initialises_in_eval_and_refuses_to_reverse_uninitialised() -> None:
    layer = ActNorm(C).eval()
    x = torch.randn(2, C, 3, 3) + 4
    y, logdet = layer(x)
    assert not layer.is_initialized and torch.equal(y, x) and torch.equal(logdet, torch.zeros(2))
    with pytest.raises(RuntimeError, match="not initialised"):
        layer.reverse(x)
    with pytest.raises(RuntimeError, match="not initialised"):
        ActNorm(C).train().reverse(x)  # not even in training mode: only the encode direction initialises


# --- 1x1 convolution ------------------------------------------------------------------------------------


def test_conv1x1_starts_orthogonal() -> None:
    conv = InvertibleConv1x1(6)
    torch.testing.assert_close(conv.weight @ conv.weight.T, torch.eye(6), atol=1e-5, rtol=0)


def test_conv1x1_inverse_cache_is_invalidated_when_the_weight_changes() -> None:
    torch.manual_seed(0)
    conv = InvertibleConv1x1(C).eval()
    x = torch.randn(2, C, 3, 3)

    def round_trip_error() -> float:
        with torch.no_grad():
            return (conv.reverse(conv(x)[0])[0] - x).abs().max().item()

    assert round_trip_error() < 1e-5 and conv.cache_misses == 1
    assert round_trip_error() < 1e-5 and conv.cache_misses == 1  # cached
    with torch.no_grad():
        conv.weight.add_(0.3 * torch.randn(C, C))  # an in-place update, as an optimiser step makes
    assert round_trip_error() < 1e-5 and conv.cache_misses == 2
    with torch.no_grad():
        torch._foreach_lerp_([conv.weight], [torch.eye(C) * 2], 0.5)  # the EMA's update
    assert round_trip_error() < 1e-5 and conv.cache_misses == 3
    conv.load_state_dict({"weight": torch.linalg.qr(torch.randn(C, C))[0]})
    assert round_trip_error() < 1e-5 and conv.cache_misses == 4
    _, logdet = conv(x)
    assert logdet[0].item() == pytest.approx(9 * torch.linalg.slogdet(conv.weight.double())[1].item(), abs=1e-5)
    conv.train().eval()  # switching modes drops the cache
    assert round_trip_error() < 1e-5 and conv.cache_misses == 5


def test_conv1x1_training_mode_has_gradients_through_logdet() -> None:
    conv = InvertibleConv1x1(C).train()
    _, logdet = conv(torch.randn(1, C, 2, 2))
    logdet.sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


# --- small pieces ---------------------------------------------------------------------------------------


def test_squeeze_channel_order() -> None:
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    z, logdet = Squeeze()(x)
    assert z.shape == (2, 12, 2, 3) and torch.equal(logdet, torch.zeros(2))
    for c in range(3):
        for dy in range(2):
            for dx in range(2):
                assert torch.equal(z[:, c * 4 + 2 * dy + dx], x[:, c, dy::2, dx::2])
    with pytest.raises(ValueError, match="even"):
        Squeeze()(torch.zeros(1, 3, 5, 4))


def test_affine_scale_is_bounded() -> None:
    raw = torch.tensor([-1e30, -50.0, 0.0, 50.0, 1e30])
    scale = affine_scale(raw)
    assert torch.isfinite(scale).all()
    assert (scale >= SCALE_FLOOR).all() and (scale <= 1 + SCALE_FLOOR).all()
    assert scale[2].item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item() + SCALE_FLOOR)


def test_fresh_coupling_and_injector_start_at_sigmoid_two() -> None:
    """Zero-initialised output convs: at init y = x * (sigmoid(2) + 1e-4) on the transformed channels."""
    x, cond = inputs(1, 4, True)
    factor = torch.sigmoid(torch.tensor(2.0)).item() + SCALE_FLOOR
    y, _ = AffineInjector(C, COND, 8).train()(x, cond)
    torch.testing.assert_close(y, x * factor)
    y, _ = ConditionalAffineCoupling(C, COND, 8).train()(x, cond)
    torch.testing.assert_close(y[:, C // 2 :], x[:, C // 2 :] * factor)
    torch.testing.assert_close(y[:, : C // 2], x[:, : C // 2])


def test_condition_is_required_where_declared() -> None:
    x, cond = inputs(1, 4, True)
    with pytest.raises(ValueError):
        AffineInjector(C, COND, 8)(x, None)
    with pytest.raises(ValueError):
        ConditionalAffineCoupling(C, 0, 8)(x, cond)


def layer_param_net() -> LayerParamNet:
    """A parameter network given as layers, as ArtFlow builds its couplings' networks."""
    return LayerParamNet(nn.Conv2d(C, 8, 3, padding=1), nn.ReLU(), ZeroConv2d(8, 6))


@torch.no_grad()
@pytest.mark.parametrize("make_net", [lambda: ParamNet(C, 6, 8), layer_param_net], ids=["ParamNet", "LayerParamNet"])
def test_param_nets_run_in_bf16_on_request_and_return_the_flows_dtype(make_net: Callable[[], nn.Module]) -> None:
    net = make_net()
    perturb(net, scale=0.2)
    x = torch.randn(2, C, 8, 8, generator=torch.Generator().manual_seed(4))
    reference = net(x)
    set_param_net_dtype(net, torch.bfloat16)
    low = net(x)
    assert low.dtype == torch.float32
    assert not torch.equal(low, reference)  # it really computed in bf16
    assert (low - reference).abs().max() <= 0.02 * reference.abs().max()  # bf16 keeps about 3 digits
    set_param_net_dtype(net, None)
    assert torch.equal(net(x), reference)
    with param_nets_in(net, "bf16"):
        assert torch.equal(net(x), low)
    with param_nets_in(net, "fp16"):  # flows offer no fp16: the flow's own dtype
        assert torch.equal(net(x), reference)
    with pytest.raises(RuntimeError), param_nets_in(net, "bf16"):
        raise RuntimeError("a failed tile")
    assert torch.equal(net(x), reference)  # back in fp32 after a failure too


def test_a_layer_param_net_keeps_the_names_of_the_sequential_it_replaces() -> None:
    layers = [nn.Conv2d(C, 8, 3, padding=1), nn.ReLU(), ZeroConv2d(8, 6)]
    assert list(LayerParamNet(*layers).state_dict()) == list(nn.Sequential(*layers).state_dict())
