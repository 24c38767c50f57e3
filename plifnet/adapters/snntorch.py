"""snnTorch 1.0 on the neuron contract.

- Neurons are the ``snntorch.SpikingNeuron`` subclasses (Leaky, Synaptic, Alpha, Lapicque, RLeaky,
  RSynaptic, ...). Their output is ``spk``, or ``(spk, mem, ...)``: the spikes are its first element.
- State: with ``init_hidden=True`` a neuron keeps its hidden state (``mem``, ``syn``, ``spk``: its
  non-persistent buffers) between calls; reset empties them, as a new neuron has them, so the next
  call starts from zeros of the input's shape. Nothing else is touched: ``snntorch.utils.reset``
  resets every neuron of the neuron's class in the process (a class-wide list of instances),
  other networks' too. With ``init_hidden=False`` the state is the caller's, passed to every call.
- tau in steps: ``mem[t] = beta mem[t-1] + input[t]`` is the leak ``1 - 1/tau``, so tau = 1/(1 - beta)
  (beta clamped to [0, 1] as snnTorch does; per neuron when beta is a vector), learned with
  ``learn_beta=True``; Synaptic's synaptic current likewise, ``tau_syn`` = 1/(1 - alpha) (``learn_alpha=True``).
  snnTorch's documentation reads beta as exp(-1/tau), tau = -1/ln(beta): plifnet's figures say which they show. Alpha's beta decays a synaptic current, not the membrane: it has no tau here.
- Membrane (figures): ``mem`` after each step (returned, or kept with ``init_hidden``), which snnTorch resets at
  the next step: it shows where it crossed the threshold.
- NIR: ``Leaky(reset_mechanism="zero")`` is plifnet's step with the input not decayed, k = 1 - beta,
  v_reset = 0 (``mem[t] = beta (1 - S[t-1]) mem[t-1] + x[t]``, spike where ``mem > threshold``); the
  default "subtract" reset leaves ``beta mem - threshold``, which no NIR neuron computes.
"""

from __future__ import annotations

import torch

from plifnet.contract import Adapter, Dynamics, Membrane, TimeConstant, from_package
from plifnet.errors import UserError


class SnnTorch(Adapter):
    convention = "1/(1-beta)"  # the leak per step; snnTorch's documentation writes -1/ln(beta) (its exp. decay)

    def claims(self, module):
        if not from_package(module, "snntorch"):
            return False
        import snntorch

        return isinstance(module, snntorch.SpikingNeuron)

    def keeps_state(self, module):
        return bool(module.init_hidden)

    def leak_advice(self, module):
        if module.init_hidden:
            return super().leak_advice(module)
        return (
            f"{type(module).__name__} with init_hidden=False takes its state from the caller: start it afresh in "
            f"every forward (mem = None at step 0, or {type(module).__name__}'s init_leaky()/reset_mem()), instead "
            f"of keeping it on the module between batches"
        )

    def reset(self, module):
        for name in module._non_persistent_buffers_set:
            state = getattr(module, name)
            if torch.is_tensor(state):
                setattr(module, name, torch.zeros(0, dtype=state.dtype, device=state.device))

    def tau(self, module):
        import snntorch

        beta = getattr(module, "beta", None)
        if not torch.is_tensor(beta) or isinstance(module, snntorch.Alpha):
            return None
        return 1 / (1 - beta.detach().clamp(0, 1))

    def learns_tau(self, module):
        return self.tau(module) is not None and isinstance(module.beta, torch.nn.Parameter)

    def tau_parameters(self, module):
        return [module.beta] if self.learns_tau(module) else []  # not a learnt threshold beside it

    def time_constants(self, module):
        """tau, and ``tau_syn`` = 1/(1 - alpha) of Synaptic and RSynaptic, whose synaptic current decays by alpha a
        step (``syn[t] = alpha syn[t-1] + input[t]``), learnt with ``learn_alpha=True``."""
        import snntorch

        constants = super().time_constants(module)
        alpha = getattr(module, "alpha", None)
        if torch.is_tensor(alpha) and isinstance(module, (snntorch.Synaptic, snntorch.RSynaptic)):
            learned = isinstance(alpha, torch.nn.Parameter)
            constants["tau_syn"] = TimeConstant(
                1 / (1 - alpha.detach().clamp(0, 1)), learned, (alpha,) if learned else (), "1/(1-alpha)"
            )
        return constants

    def membrane(self, module, output):
        mem = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else getattr(module, "mem", None)
        threshold = getattr(module, "threshold", None)
        if not torch.is_tensor(mem) or mem.shape != self.spikes(module, output).shape or threshold is None:
            return None
        threshold = torch.as_tensor(threshold)
        if threshold.numel() != 1:
            return None
        return Membrane(mem.detach(), float(threshold), "mem after the step (reset at the next step)")

    def dynamics(self, module):
        import snntorch

        name = type(module).__name__
        if type(module) is not snntorch.Leaky:
            return super().dynamics(module)
        if module.reset_mechanism != "zero" or not module.reset_delay:
            raise UserError(
                f"{name} with reset_mechanism={module.reset_mechanism!r} has no NIR form: only the reset to "
                f"zero (reset_mechanism='zero', reset_delay=True) is a NIR LIF"
            )
        if (
            module.inhibition
            or module.state_quant
            or float(module.graded_spikes_factor) != 1
            or module.threshold.numel() != 1
        ):
            raise UserError(
                f"{name} with inhibition, state quantisation, graded spikes or a threshold per neuron has no NIR form"
            )
        return Dynamics(1 - module.beta.detach().clamp(0, 1), False, float(module.threshold), 0.0)
