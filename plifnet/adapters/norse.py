"""Norse 1.1 on the neuron contract.

- Neurons are Norse's cells and layers (``SNNCell``, ``SNN``, ``SNNRecurrentCell``, ``SNNRecurrent``:
  ``LIFCell``, ``LIF``, ``LIFBoxCell``, ``IAFCell``, ...), except the leaky integrators (``LICell``,
  ``LI``), whose output is a voltage. They return ``(spikes, state)``.
- State: none. Norse passes the state explicitly (``state=None`` starts at rest), so there is nothing
  to reset; a network that keeps a returned state on ``self`` is caught by the leak check.
- tau in steps: the membrane ``dv = dt tau_mem_inv (v_leak - v + i)`` leaks ``dt tau_mem_inv`` a step,
  so tau = 1/(dt tau_mem_inv); learned when ``p.tau_mem_inv`` is a tensor that requires grad (an
  ``nn.Parameter`` the network registers).
- Membrane (figures): the returned state's ``v`` (after the reset) of a cell called step by step; a layer over a
  whole sequence returns its last state only, so it has none.
"""

from __future__ import annotations

import torch

from plifnet.contract import Adapter, Membrane, TimeConstant, from_package


class Norse(Adapter):
    convention = "1/(dt*tau_mem_inv)"

    def claims(self, module):
        if not from_package(module, "norse"):
            return False
        from norse.torch.module.snn import SNN, SNNCell, SNNRecurrent, SNNRecurrentCell

        return isinstance(module, (SNNCell, SNN, SNNRecurrentCell, SNNRecurrent))

    def is_neuron(self, module):  # by ancestry: a subclass of LICell integrates too
        return not any("leaky_integrator" in cls.__module__ for cls in type(module).__mro__)

    def keeps_state(self, module):
        return False

    def leak_advice(self, module):
        return (
            f"Norse's {type(module).__name__} takes its state from the caller: pass state=None at the first step "
            f"of every forward, instead of a state kept on the module between batches"
        )

    def tau(self, module):
        inverse = getattr(getattr(module, "p", None), "tau_mem_inv", None)
        if inverse is None:
            return None
        return 1 / (module.dt * torch.as_tensor(inverse).detach())

    def learns_tau(self, module):
        inverse = getattr(getattr(module, "p", None), "tau_mem_inv", None)
        return torch.is_tensor(inverse) and inverse.requires_grad

    def tau_parameters(self, module):
        return [module.p.tau_mem_inv] if self.learns_tau(module) else []  # not the other parameters of p

    def time_constants(self, module):
        """tau, and the synaptic current's ``tau_syn`` = 1/(dt tau_syn_inv) and an adaptive neuron's ``tau_adapt``
        = 1/(dt tau_adapt_inv) (LSNN), each learnt where the network made it a tensor that requires grad."""
        constants = super().time_constants(module)
        p = getattr(module, "p", None)
        for name, field in (("tau_syn", "tau_syn_inv"), ("tau_adapt", "tau_adapt_inv")):
            inverse = getattr(p, field, None)
            if inverse is not None:
                learned = torch.is_tensor(inverse) and inverse.requires_grad
                constants[name] = TimeConstant(
                    1 / (module.dt * torch.as_tensor(inverse).detach()),
                    learned,
                    (inverse,) if learned else (),
                    f"1/(dt*{field})",
                )
        return constants

    def membrane(self, module, output):
        state = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
        v, threshold = getattr(state, "v", None), getattr(getattr(module, "p", None), "v_th", None)
        if not torch.is_tensor(v) or v.shape != self.spikes(module, output).shape or threshold is None:
            return None
        return Membrane(v.detach(), float(torch.as_tensor(threshold)), "state.v, after the reset")
