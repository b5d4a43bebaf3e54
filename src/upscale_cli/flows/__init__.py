"""The shared flow library: invertible building blocks for normalizing flows (SRFlow, ArtFlow, ...).

Every layer follows one protocol (see `layers.InvertibleLayer`): `forward` is the ENCODE direction
(data -> latent) and returns `(z, logdet)`; `reverse` is its exact inverse and returns the negated
log-determinant; the tensor has the same shape both ways. Log-determinants are per sample, shape (B,).
`multiscale.MultiScaleFlow` stacks levels of squeeze, steps and splits into a multi-scale flow.
"""

from upscale_cli.flows.layers import (
    ActNorm,
    AdditiveCoupling,
    AffineInjector,
    ConditionalAffineCoupling,
    FlowSequence,
    FlowStep,
    InvertibleConv1x1,
    InvertibleLayer,
    LayerParamNet,
    LUInvertibleConv1x1,
    ParamNet,
    Split,
    Squeeze,
    ZeroConv2d,
    affine_scale,
    gaussian_log_prob,
    param_net,
    param_nets_in,
    set_param_net_dtype,
    standard_normal_log_prob,
    transition_step,
)
from upscale_cli.flows.multiscale import FlowLevel, MultiScaleFlow

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineInjector",
    "ConditionalAffineCoupling",
    "FlowLevel",
    "FlowSequence",
    "FlowStep",
    "InvertibleConv1x1",
    "InvertibleLayer",
    "LayerParamNet",
    "LUInvertibleConv1x1",
    "MultiScaleFlow",
    "ParamNet",
    "Split",
    "Squeeze",
    "ZeroConv2d",
    "affine_scale",
    "gaussian_log_prob",
    "param_net",
    "param_nets_in",
    "set_param_net_dtype",
    "standard_normal_log_prob",
    "transition_step",
]
