"""SpikingJelly 2.0 (``spikingjelly.activation_based``) on the neuron contract.

- Every ``base.MemoryModule`` keeps state (neurons, and also ``layer.Dropout``'s mask) and forgets it
  with its own ``reset()``, what ``functional.reset_net`` calls; single- and multi-step mode alike.
- Neurons are the modules of ``activation_based.neuron`` and their subclasses; their output is the spikes.
- tau in steps: ``ParametricLIFNode`` learns ``w`` with ``1/tau = sigmoid(w)``, so tau = 1/sigmoid(w);
  ``LIFNode`` has a fixed ``tau``; ``IFNode`` has none.
- Membrane (figures): ``V[t]`` after the reset, from ``v_seq`` (``store_v_seq``, switched on while recording)
  in multi-step mode and ``v`` after each call in single-step mode.
- NIR: these three with a hard reset compute plifnet's step (both fire at ``H >= v_threshold``), with
  k = sigmoid(w), 1/tau and 0 (IF charges ``H = V + X``); the soft reset (``v_reset=None``) has no NIR form.
"""

from __future__ import annotations

import contextlib

import torch

from plifnet.contract import Adapter, Dynamics, Membrane, from_package
from plifnet.errors import UserError


class SpikingJelly(Adapter):
    convention = "1/sigmoid(w)"  # ParametricLIFNode; LIFNode's tau as it is

    def claims(self, module):
        if not from_package(module, "spikingjelly"):
            return False
        from spikingjelly.activation_based import base

        return isinstance(module, base.MemoryModule)

    def is_neuron(self, module):
        # by ancestry: research code subclasses the library's neurons (class MyPLIF(neuron.ParametricLIFNode))
        return any(cls.__module__.startswith("spikingjelly.activation_based.neuron") for cls in type(module).__mro__)

    def tau(self, module):
        if self.learns_tau(module):
            return 1 / torch.sigmoid(module.w.detach())
        tau = getattr(module, "tau", None)
        return tau.detach() if torch.is_tensor(tau) else tau

    def learns_tau(self, module):
        from spikingjelly.activation_based.neuron import ParametricLIFNode

        return isinstance(module, ParametricLIFNode)

    @contextlib.contextmanager
    def recording(self, module):
        stored = getattr(module, "store_v_seq", None)
        if stored is not None:
            module.store_v_seq = True
        try:
            yield
        finally:
            if stored is not None:
                module.store_v_seq = stored

    def membrane(self, module, output):
        values = (
            getattr(module, "v_seq", None) if getattr(module, "step_mode", "s") == "m" else getattr(module, "v", None)
        )
        if not torch.is_tensor(values) or values.shape != self.spikes(module, output).shape:
            return None
        return Membrane(values.detach(), float(module.v_threshold), "V[t], after the reset")

    def dynamics(self, module):
        from spikingjelly.activation_based.neuron import IFNode, LIFNode, ParametricLIFNode

        name = type(module).__name__
        if type(module) not in (ParametricLIFNode, LIFNode, IFNode):
            return super().dynamics(module)
        if module.v_reset is None:
            raise UserError(
                f"{name} with the soft reset (v_reset=None) has no NIR form (NIR's neurons reset to "
                f"v_reset); train with v_reset=0.0 to export"
            )
        if isinstance(module, IFNode):
            return Dynamics(0.0, False, float(module.v_threshold), float(module.v_reset))
        k = torch.sigmoid(module.w.detach()) if isinstance(module, ParametricLIFNode) else 1 / module.tau
        return Dynamics(k, bool(module.decay_input), float(module.v_threshold), float(module.v_reset))
