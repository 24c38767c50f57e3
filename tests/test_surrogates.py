import math

import pytest
import torch

from plifnet.surrogates import SURROGATES, ATan, surrogate


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_forward_is_heaviside_with_step_at_zero(name):
    x = torch.tensor([-2.0, -1e-6, 0.0, 1e-6, 3.0])
    assert torch.equal(surrogate(name)(x), torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]))


@pytest.mark.parametrize("name", sorted(SURROGATES))
@pytest.mark.parametrize("alpha", [None, 0.7, 3.0])
def test_backward_is_derivative_of_primitive(name, alpha):
    fn = surrogate(name, alpha)
    # avoid the kinks of the piecewise surrogates, where the derivative is one-sided
    x = torch.linspace(-2.37, 2.41, 97, dtype=torch.float64)
    x = x[(x.abs() - 1 / fn.alpha).abs() > 1e-3]
    x = x[(x.abs() - 0.5 / fn.alpha).abs() > 1e-3]

    x1 = x.clone().requires_grad_()
    fn(x1).sum().backward()
    x2 = x.clone().requires_grad_()
    fn.primitive(x2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    assert x1.grad.max() > 0  # the surrogate does pass a gradient near the threshold


def test_atan_with_alpha_2_is_the_papers_gradient():
    x = torch.linspace(-3, 3, 61, requires_grad=True)
    ATan(2.0)(x).sum().backward()
    torch.testing.assert_close(x.grad, 1 / (1 + (math.pi * x.detach()) ** 2))


def test_unknown_surrogate_and_bad_alpha_are_rejected():
    with pytest.raises(ValueError, match="unknown surrogate 'tanh'.*atan"):
        surrogate("tanh")
    with pytest.raises(ValueError, match="alpha must be > 0"):
        ATan(0.0)
