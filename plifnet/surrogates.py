"""Surrogate gradients for the spike function.

A spiking neuron fires with the Heaviside step ``S = heaviside(x)``, ``x = H - v_threshold``, whose
derivative is zero almost everywhere. Training by backprop through time replaces that derivative in
the backward pass with a smooth bump ``g(x)``; the forward pass stays the exact step, with
``heaviside(0) = 1`` (docs/paper.md section 1).

Each surrogate documents ``g`` (:meth:`derivative`) and a smooth ``primitive`` whose derivative is
``g``, so the backward can be checked against autograd of the primitive. A plug-in surrogate is a
subclass that defines ``derivative``, registered with :func:`register_surrogate` or an entry point
in the group ``plifnet.surrogates``; the fused kernels know the surrogates whose class declares a
``kernel_code`` (:func:`kernel_code`), and with any other the step runs compiled
(:mod:`plifnet.kernels.compiled`).
"""

from __future__ import annotations

import math

import torch

from plifnet.errors import UserError
from plifnet.registry import Registry


class _Heaviside(torch.autograd.Function):
    """Forward: exact step. Backward: the surrogate's derivative at ``x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: "Surrogate") -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_spike: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_spike * ctx.surrogate.derivative(x), None


class Surrogate:
    """Base class: ``surrogate(x)`` is ``heaviside(x)`` with ``derivative(x)`` as its gradient."""

    kernel_code: int | None = None  # the fused kernels' switch on the derivative (kernels/cpu.py, kernels/gpu.py)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # a subclass may change the derivative: it has a fused form only where it declares one itself (read
        # as a plain attribute, which torch.compile traces without a break)
        cls.kernel_code = cls.__dict__.get("kernel_code")

    def __init__(self, alpha: float):
        if not alpha > 0:
            raise UserError(f"{type(self).__name__}: alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _Heaviside.apply(x, self)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def primitive(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.alpha == other.alpha

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.alpha))


class ATan(Surrogate):
    """Arc-tangent surrogate, the paper's choice (Fang et al. 2021, alpha = 2).

    ``g(x) = alpha / (2 * (1 + (pi/2 * alpha * x)^2))``, primitive ``arctan(pi/2 * alpha * x) / pi + 1/2``.
    """

    kernel_code = 0

    def __init__(self, alpha: float = 2.0):
        super().__init__(alpha)

    def derivative(self, x):
        return self.alpha / 2 / (1 + (math.pi / 2 * self.alpha * x) ** 2)

    def primitive(self, x):
        return torch.atan(math.pi / 2 * self.alpha * x) / math.pi + 0.5


class Sigmoid(Surrogate):
    """Logistic surrogate: ``g(x) = alpha * s * (1 - s)``, ``s = sigmoid(alpha * x)`` (primitive ``s``)."""

    kernel_code = 1

    def __init__(self, alpha: float = 4.0):
        super().__init__(alpha)

    def derivative(self, x):
        s = torch.sigmoid(self.alpha * x)
        return self.alpha * s * (1 - s)

    def primitive(self, x):
        return torch.sigmoid(self.alpha * x)


class PiecewiseQuadratic(Surrogate):
    """Triangle-shaped gradient of a piecewise quadratic primitive (Esser et al. 2016).

    ``g(x) = alpha - alpha^2 * |x|`` for ``|x| <= 1/alpha``, else 0.
    """

    kernel_code = 2

    def __init__(self, alpha: float = 1.0):
        super().__init__(alpha)

    def derivative(self, x):
        return (self.alpha - self.alpha**2 * x.abs()).clamp_min(0)

    def primitive(self, x):
        a = self.alpha
        inner = torch.where(x < 0, (a * x + 1) ** 2 / 2, 1 - (1 - a * x) ** 2 / 2)
        return torch.where(x.abs() <= 1 / a, inner, (x > 0).to(x.dtype))


class FastSigmoid(Surrogate):
    """SuperSpike's fast sigmoid (Zenke & Ganguli 2018): ``g(x) = 1 / (1 + alpha * |x|)^2``.

    Primitive ``x / (1 + alpha * |x|)`` (its derivative is ``g``; it is not normalised to [0, 1]).
    """

    kernel_code = 3

    def __init__(self, alpha: float = 25.0):
        super().__init__(alpha)

    def derivative(self, x):
        return 1 / (1 + self.alpha * x.abs()) ** 2

    def primitive(self, x):
        return x / (1 + self.alpha * x.abs())


class Rectangle(Surrogate):
    """Rectangular window (Wu et al. 2018, STBP): ``g(x) = alpha`` for ``|x| < 1/(2*alpha)``, else 0."""

    kernel_code = 4

    def __init__(self, alpha: float = 1.0):
        super().__init__(alpha)

    def derivative(self, x):
        return (x.abs() < 0.5 / self.alpha).to(x.dtype) * self.alpha

    def primitive(self, x):
        return (self.alpha * x + 0.5).clamp(0, 1)


SURROGATES = Registry("surrogate", "plifnet.surrogates")
for _name, _cls in (
    ("atan", ATan),
    ("sigmoid", Sigmoid),
    ("piecewise_quadratic", PiecewiseQuadratic),
    ("fast_sigmoid", FastSigmoid),
    ("rectangle", Rectangle),
):
    SURROGATES.register(_name, _cls)
register_surrogate = SURROGATES.register


def surrogate(name: "str | Surrogate", alpha: float | None = None) -> Surrogate:
    """A surrogate by name (``atan``, ``sigmoid``, ..., a plug-in's entry-point name or a class path)
    with its default or the given alpha; a :class:`Surrogate` instance is returned as it is."""
    if isinstance(name, Surrogate):
        return name
    cls = SURROGATES.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Surrogate)):
        raise UserError(
            f"surrogate {name!r} is {cls!r}, not a subclass of plifnet.surrogates.Surrogate "
            f"(which gives derivative(x); see docs/EXTENDING.md)"
        )
    return cls() if alpha is None else cls(alpha)


def kernel_code(surrogate: Surrogate) -> int | None:
    """The fused kernels' code of ``surrogate``, as its own class declares it, or None: the step then runs compiled."""
    return type(surrogate).kernel_code
