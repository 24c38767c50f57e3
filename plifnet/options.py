"""The options of a spiking neuron layer, as one object.

``NeuronOptions`` travels by keyword from the LightningModule (whose hyperparameters stay one per
option, for configs and old checkpoints) through :func:`plifnet.factory.neuron_factory` to every
neuron it builds, the neuron's step functions and the kernel dispatch (:mod:`plifnet.kernels`), as
Norse's ``LIFParameters`` does: one frozen value, never a row of positional booleans.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from plifnet import time_constants
from plifnet.errors import UserError
from plifnet.surrogates import Surrogate, surrogate as make_surrogate

BACKENDS = ("auto", "reference", "compile", "cpu", "triton")


@dataclass(frozen=True)
class NeuronOptions:
    """Options of one neuron layer (equations in :mod:`plifnet.neurons`).

    Attributes:
        tau: the initial tau of PLIF, the fixed tau of LIF, in time steps (> 1; IF has none).
        v_threshold: the firing threshold.
        v_reset: where the hard reset puts ``V`` after a spike (and where the leak pulls); ``None``
            selects the soft reset ``V = H - v_threshold`` (the leak then pulls to 0).
        detach_reset: stop the gradient through the spike in the reset (every published run does).
        decay_input: ``H = V + k (X - (V - V_reset))`` (True) or ``H = V - k (V - V_reset) + X``.
        surrogate: the surrogate gradient, a :class:`~plifnet.surrogates.Surrogate` or its name
            (with its default alpha).
        per_channel: one tau per channel (dim 1 of a step's input: per neuron after a Linear) instead of one
            per layer (PLIF, ALIF, adLIF).
        tau_init: the distribution that a per-channel tau starts from (:mod:`plifnet.time_constants`:
            ``constant``, ``uniform``, ``lognormal``, ``gamma``), around ``tau`` with spread ``tau_spread``.
        tau_spread: the distribution's spread (uniform: relative half-width; lognormal: log-standard
            deviation; gamma: coefficient of variation).
        tau_min, tau_max: bounds of a learnt membrane tau, kept by its parametrisation (None: no upper bound).
        tau_adapt: the initial adaptation time constant of ALIF and adLIF (learnt, per channel with
            ``per_channel``, drawn from ``tau_init`` like the membrane's; its lower bound is 1).
        adaptation: how far ALIF's threshold rises per unit of adaptation (Bellec et al.'s beta).
            Neurons without adaptation ignore these two, so that one config serves an ablation of neurons.
        backend: how a multi-step call runs: ``auto`` (the fused kernel of the device for the
            built-in step, else the compiled step), ``reference`` (per-step PyTorch), ``compile``
            (the neuron's own hooks through ``torch.compile``), ``cpu`` / ``triton`` (the fused kernels).
    """

    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: float | None = 0.0
    detach_reset: bool = True
    decay_input: bool = True
    surrogate: Surrogate | str = "atan"
    per_channel: bool = False
    backend: str = "auto"
    tau_init: str = "constant"
    tau_spread: float = 0.5
    tau_min: float = 1.0
    tau_max: float | None = None
    tau_adapt: float = 200.0
    adaptation: float = 1.8

    def __post_init__(self):
        set_field = object.__setattr__.__get__(self)  # frozen: normalise the given values once, here
        set_field("tau", float(self.tau))
        set_field("v_threshold", float(self.v_threshold))
        set_field("v_reset", None if self.v_reset is None else float(self.v_reset))
        set_field("detach_reset", bool(self.detach_reset))
        set_field("decay_input", bool(self.decay_input))
        set_field("per_channel", bool(self.per_channel))
        set_field("surrogate", make_surrogate(self.surrogate))
        for name in ("tau_spread", "tau_min", "tau_adapt", "adaptation"):
            set_field(name, float(getattr(self, name)))
        set_field("tau_max", None if self.tau_max is None else float(self.tau_max))
        if not self.tau > 1:
            raise UserError(f"tau must be > 1 (the leak k = 1/tau must lie in (0, 1)), got tau={self.tau}")
        time_constants.check_bounds("tau", self.tau, self.tau_min, self.tau_max)
        time_constants.check_bounds("tau_adapt", self.tau_adapt, 1.0, None)
        if self.tau_init not in time_constants.DISTRIBUTIONS:
            raise UserError(f"tau_init must be one of {time_constants.DISTRIBUTIONS}, got {self.tau_init!r}")
        if self.tau_init != "constant" and not (self.per_channel and self.tau_spread > 0):
            raise UserError(
                f"tau_init {self.tau_init!r} draws one tau per channel: it needs per_channel true and tau_spread > 0"
            )
        if self.v_reset is not None and not self.v_reset < self.v_threshold:
            raise UserError(f"v_reset ({self.v_reset}) must be below v_threshold ({self.v_threshold})")
        if self.backend not in BACKENDS:
            raise UserError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    @property
    def soft_reset(self) -> bool:
        return self.v_reset is None

    @property
    def rest(self) -> float:
        """Where the leak pulls ``V`` and the hard reset puts it: ``v_reset``, or 0 for the soft reset."""
        return 0.0 if self.v_reset is None else self.v_reset

    def replace(self, **changes) -> "NeuronOptions":
        """A copy with ``changes``; an unknown name is refused with the list of known ones."""
        unknown = set(changes) - set(FIELDS)
        if unknown:
            raise UserError(f"unknown neuron option(s) {sorted(unknown)}; the options are {list(FIELDS)}")
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in FIELDS}


FIELDS = tuple(field.name for field in fields(NeuronOptions))
