"""The built-in step's equations, operation by operation (``plifnet/neurons.py`` explains them): the one place both
the neurons' step loop and the fused recurrent layer (:mod:`plifnet.kernels.recurrent`) compute them from."""

from __future__ import annotations

from plifnet.options import NeuronOptions


def leaky_charge(v, x, k, *, options: NeuronOptions):
    """Charge: ``H[t]`` from ``V[t-1]`` and ``X[t]`` (the leak ``k`` pulls towards ``options.rest``)."""
    if options.decay_input:
        return v + k * (x - (v - options.rest))
    return v - k * (v - options.rest) + x


def reset_potential(h, s, *, options: NeuronOptions):
    """Reset: ``V[t]`` from ``H[t]`` and the spike ``s`` as the reset sees it (detached with detach_reset)."""
    return h - options.v_threshold * s if options.soft_reset else h * (1 - s) + options.v_reset * s
