"""Invertible building blocks for normalizing flows (SRFlow, ArtFlow).

Every layer follows one protocol (see `layers.InvertibleLayer`): `forward` is the ENCODE direction
(data -> latent) and returns `(z, logdet)`; `reverse` is its exact inverse and returns the negated
log-determinant. Log-determinants are per sample, shape (B,).
"""

from upscale_cli.flows.layers import (
    ActNorm,
    AffineInjector,
    ConditionalAffineCoupling,
    FlowSequence,
    FlowStep,
    InvertibleConv1x1,
    InvertibleLayer,
    ParamNet,
    Split,
    Squeeze,
    ZeroConv2d,
    gaussian_log_prob,
    set_param_net_dtype,
    standard_normal_log_prob,
    transition_step,
)

__all__ = [
    "ActNorm",
    "AffineInjector",
    "ConditionalAffineCoupling",
    "FlowSequence",
    "FlowStep",
    "InvertibleConv1x1",
    "InvertibleLayer",
    "ParamNet",
    "Split",
    "Squeeze",
    "ZeroConv2d",
    "gaussian_log_prob",
    "set_param_net_dtype",
    "standard_normal_log_prob",
    "transition_step",
]
