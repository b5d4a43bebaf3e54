"""upscale: command-line super-resolution with honest figures and stochastic sampling."""

__version__ = "0.1.0"
