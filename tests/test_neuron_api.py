"""The neuron API: one options object, hooks with defaults, and a neuron's own hooks compiled.

The compiled path is checked against loops written here from the equations (the surrogate gradient
as ``step + primitive - primitive.detach()``, without plifnet's autograd Function), in float32 and
under bfloat16 input, as the fused kernels are in test_kernels.py.
"""

import dataclasses
import inspect
import math
import warnings

import numba
import pytest
import torch
from torch import nn

from plifnet import kernels, neurons
from plifnet.factory import neuron_factory
from plifnet.kernels import compiled, cpu, cpu_ops, gpu
from plifnet.models import SpikingNet
from plifnet.neurons import LIF, PLIF, BaseNode
from plifnet.options import FIELDS, NeuronOptions
from plifnet.surrogates import ATan, Sigmoid

T, SHAPE = 10, (3, 4, 6)  # [T, N, C, L]: every test compiles the same graphs once per process


def inputs(seed=0, dtype=torch.float32):
    x = torch.rand(T, *SHAPE, generator=torch.Generator().manual_seed(seed)) * 2.2
    x.view(-1)[::9] = 2.0  # with k = 1/2 and V = 0, H lands exactly on the threshold
    return x.to(dtype)


def alif_loop(x_seq, w, beta, rho):
    """ALIF from its docstring: charge and reset as PLIF's, the threshold raised by beta * A."""
    k = torch.sigmoid(w)
    v, a, spikes = torch.zeros_like(x_seq[0]), torch.zeros_like(x_seq[0]), []
    for x in x_seq:
        h = v + k * (x - v)
        z = h - 1.0 - beta * a
        s = (z >= 0).float() + (ATan().primitive(z) - ATan().primitive(z).detach())
        v, a = h * (1 - s.detach()), rho * a + s.detach()
        spikes.append(s)
    return torch.stack(spikes)


def spikes_and_grads(neuron, x, grad, time_steps=None):
    x = x.clone().requires_grad_()
    spikes = neuron(x, time_steps=time_steps)
    spikes.backward(grad)
    return spikes.detach(), x.grad, neuron.w.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_alif_runs_compiled_with_the_spikes_and_gradients_of_a_plain_loop(example_plugin, dtype, monkeypatch):
    """ALIF inherits PLIF's charge, fire and reset; the compiled step gives the loop's spikes exactly
    and its gradients (input and tau) to rounding; bf16 input is computed in float32, as the kernels do."""
    assert {"charge", "fire", "step"}.isdisjoint(vars(example_plugin.ALIF))  # only the threshold's own hooks
    monkeypatch.setattr(neurons, "run_steps", lambda *a: pytest.fail("the reference path ran"))
    neuron = example_plugin.ALIF(tau=2.0, beta=0.3, tau_adapt=5.0)
    with torch.no_grad():
        neuron.w.fill_(0.2)
    x, grad = inputs(1, dtype), torch.randn(T, *SHAPE, generator=torch.Generator().manual_seed(2)).to(dtype)
    spikes, grad_x, grad_w = spikes_and_grads(neuron, x, grad)

    w = torch.tensor(0.2, requires_grad=True)
    x_ref = x.float().requires_grad_()
    expected = alif_loop(x_ref, w, 0.3, math.exp(-1 / 5.0))
    expected.backward(grad.float())
    assert spikes.dtype == grad_x.dtype == dtype
    assert torch.equal(spikes.float(), expected.detach()) and 0.1 < expected.mean() < 0.9
    assert not torch.equal(spikes, PLIF(tau=2.0)(x))  # the adaptation changed something
    torch.testing.assert_close(grad_x, x_ref.grad.to(dtype), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_w, w.grad, rtol=1e-4, atol=1e-5)


def test_the_compiled_step_serves_every_layer_shape_and_a_constant_input(example_plugin):
    """One graph for all layer widths (the step flattened, E dynamic); per-channel tau and a constant
    input (``time_steps``) against the reference path of the same neuron."""
    for make, shape, time_steps in [
        (lambda **o: example_plugin.ALIF(per_channel=True, channels=4, **o), SHAPE, None),
        (example_plugin.ALIF, (5, 7), None),
        (example_plugin.ALIF, SHAPE, T),
    ]:
        fast, slow = make(tau=3.0), make(tau=3.0, backend="reference")
        x = torch.rand(shape if time_steps else (T, *shape), generator=torch.Generator().manual_seed(3)) * 2
        grad = torch.randn(T, *shape, generator=torch.Generator().manual_seed(4))
        got = spikes_and_grads(fast, x, grad, time_steps)
        want = spikes_and_grads(slow, x, grad, time_steps)
        assert fast._backend(x) == "compile" and torch.equal(got[0], want[0])
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[2], want[2], rtol=1e-4, atol=1e-5)


def test_a_long_sequence_compiles_one_step_and_keeps_the_same_bytes_per_step_on_every_path(example_plugin, monkeypatch):
    """Past ``UNROLLED_STEPS`` the compiled path compiles one step and calls it at every step instead of a graph
    unrolled over T, with the reference path's spikes and gradients; on both paths what autograd keeps grows by
    the same bytes per step from T = 100 to 200 as from 200 to 784 (linear in T)."""
    monkeypatch.setattr(compiled, "_compiled_run_steps", lambda: pytest.fail("a graph unrolled over T was made"))

    def run(backend, steps):
        torch.manual_seed(0)
        neuron = example_plugin.ALIF(tau=3.0, per_channel=True, channels=6, backend=backend)
        x = (torch.rand(steps, 4, 6) * 2).requires_grad_()
        sizes = []

        def pack(tensor):
            sizes.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            spikes = neuron(x)
        assert neuron._backend(x) == ("compile" if backend == "auto" else "reference")
        spikes.backward(torch.linspace(-1, 1, spikes.numel()).view_as(spikes))
        return spikes.detach(), x.grad, neuron.w.grad, sum(sizes)

    fast, slow = run("auto", 100), run("reference", 100)
    assert torch.equal(fast[0], slow[0]) and 0.05 < fast[0].mean() < 0.95
    torch.testing.assert_close(fast[1], slow[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[2], slow[2], rtol=1e-4, atol=1e-5)
    for backend, short in (("auto", fast[3]), ("reference", slow[3])):
        middle, long = run(backend, 200)[3], run(backend, 784)[3]
        assert middle > short and (middle - short) / 100 == (long - middle) / 584, backend


def test_a_plugin_surrogate_on_the_builtin_step_runs_compiled(example_plugin):
    fast, slow = (
        PLIF(surrogate=example_plugin.Gaussian(3.0)),
        PLIF(surrogate=example_plugin.Gaussian(3.0), backend="reference"),
    )
    x, grad = inputs(5), torch.randn(T, *SHAPE, generator=torch.Generator().manual_seed(6))
    assert fast._backend(x) == "compile" and PLIF()._backend(x) == ("cpu" if kernels.available("cpu") else "reference")
    got, want = spikes_and_grads(fast, x, grad), spikes_and_grads(slow, x, grad)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[2], want[2], rtol=1e-4, atol=1e-5)


def test_a_neuron_that_cannot_compile_says_why_once_and_runs_the_reference():
    class Moody(BaseNode):
        def threshold(self, state):  # Python control flow on a value: no graph can hold it
            return 0.5 if float(state["v"].mean()) > 0.3 else 1.0

    x = inputs(7)
    with pytest.warns(
        UserWarning,
        match=r"neuron Moody runs on the reference path, not compiled \(.*\); the reference "
        r"path runs one PyTorch operation per step",
    ):
        first = Moody()(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = Moody()(x)
    assert torch.equal(first, second) and torch.equal(first, Moody(backend="reference")(x))
    with pytest.raises(ValueError, match="backend 'cpu' fuses the built-in step only, and Moody overrides threshold"):
        Moody(backend="cpu")(x)
    with pytest.raises(ValueError, match="backend 'compile' computes in float32; use 'reference'"):
        Moody(backend="compile")(x.double())  # asked for explicitly, never run at another precision quietly


def test_hooks_have_defaults_and_a_bare_basenode_is_a_lif():
    """The "easy way" of old raised a bare NotImplementedError from decay(): now every hook has a
    default, so BaseNode is LIF's step (k = 1/tau) and a subclass overrides only what differs."""
    x = inputs(8)
    assert torch.equal(BaseNode(tau=4.0)(x), LIF(tau=4.0)(x)) and 0 < LIF(tau=4.0)(x).mean() < 1
    assert BaseNode().own_hooks == [] and BaseNode().leak() == 0.5

    class TwoCompartment(BaseNode):  # the charge alone differs: a dendrite filters the input first
        def initial_state(self, x):
            return dict(super().initial_state(x), d=torch.zeros_like(x))

        def charge(self, state, x, k):
            d = state["d"] + 0.5 * (x - state["d"])
            return dict(super().charge(state, d, k), d=d)

    v, d, expected = torch.zeros(SHAPE), torch.zeros(SHAPE), []
    for x_t in x:
        d = d + 0.5 * (x_t - d)
        h = v + 0.5 * (d - v)
        s = (h >= 1.0).float()
        v = h * (1 - s)
        expected.append(s)
    assert torch.equal(TwoCompartment(backend="reference")(x), torch.stack(expected))


def test_options_are_one_frozen_object_passed_whole_to_basenode_subclasses():
    options = NeuronOptions(tau=4.0, v_threshold=0.5, surrogate="sigmoid")
    assert options.surrogate == Sigmoid() and options.rest == 0.0 and NeuronOptions(v_reset=None).soft_reset
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.tau = 3.0
    with pytest.raises(TypeError, match=r"unknown neuron option\(s\) \['taus'\]; the options are \['tau', "):
        options.replace(taus=3.0)
    with pytest.raises(ValueError, match="tau must be > 1"):
        NeuronOptions(tau=1.0)
    with pytest.raises(ValueError, match=r"PLIF: give the options as options=NeuronOptions\(...\) or field by field"):
        PLIF(options=options, tau=3.0)
    defaults = {p.name: p.default for p in inspect.signature(BaseNode).parameters.values() if p.name in FIELDS}
    assert NeuronOptions(**defaults) == NeuronOptions() and set(defaults) == set(FIELDS)  # one set of defaults
    assert PLIF(tau=3.0, v_threshold=0.5).options == NeuronOptions(tau=3.0, v_threshold=0.5)

    class Gain(BaseNode):  # takes **kwargs: it gets options= and channels=, never a stray tau
        def __init__(self, *, gain: float = 2.0, **kwargs):
            super().__init__(**kwargs)
            self.gain = gain

    neuron = neuron_factory(Gain, options=options, detach_reset=False)(16)
    assert neuron.options == options.replace(detach_reset=False) and neuron.channels == 16 and neuron.gain == 2.0

    class Plain(nn.Module):  # not a BaseNode: the option fields it names, or all of them with **kwargs
        def __init__(self, v_threshold: float, **rest):
            super().__init__()
            self.v_threshold, self.rest = v_threshold, rest

        def reset(self):
            pass

    plain = neuron_factory(Plain, options=options)(8)
    assert plain.v_threshold == 0.5 and set(plain.rest) == set(FIELDS) - {"v_threshold"} | {"channels"}
    assert neuron_factory("plif", tau=3.0, per_channel=True)(6).w.shape == (6,)


def test_the_network_builds_every_neuron_from_one_options_object():
    model = SpikingNet.paper(
        "mnist",
        time_steps=2,
        options=NeuronOptions(tau=3.0, v_reset=None, surrogate=Sigmoid(3.0), per_channel=True, backend="reference"),
    )
    found = [module.options for module in model.modules() if isinstance(module, BaseNode)]
    assert len(found) == 4 and set(found) == {
        NeuronOptions(tau=3.0, v_reset=None, surrogate=Sigmoid(3.0), per_channel=True, backend="reference")
    }


OPTION_NAMES = set(FIELDS) | {"options", "v_th", "rest", "soft", "code", "alpha", "static", "per_element", "bf16"}
# a backend's name asked about, not an option passed on; autograd Functions take every argument positionally
EXEMPT = {"available", "_kernels", "FusedMultiStep.forward"}


def test_no_function_takes_neuron_options_positionally():
    """Every Python function of plifnet.neurons and plifnet.kernels takes the neuron's options by
    keyword (``options=``, or keyword-only flags). numba's compiled functions are called by keyword
    (their inlining cannot bind keyword-only parameters); ``FusedMultiStep.apply`` takes the one
    options object positionally, as autograd Functions take every argument."""
    offenders = []
    for module in (neurons, kernels, compiled, cpu, cpu_ops, gpu):
        functions = [value for value in vars(module).values() if getattr(value, "__module__", None) == module.__name__]
        functions += [member for cls in functions if inspect.isclass(cls) for member in vars(cls).values()]
        for function in functions:
            if (
                isinstance(function, numba.core.dispatcher.Dispatcher)
                or not inspect.isfunction(getattr(function, "__wrapped__", function))
                or function.__qualname__ in EXEMPT
            ):
                continue  # numba and triton kernels, classes (their methods are listed)
            function = getattr(function, "__wrapped__", function)  # lru_cache
            positional = [
                p.name
                for p in inspect.signature(function).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name in OPTION_NAMES
            ]
            if positional:
                offenders.append(f"{module.__name__}.{function.__qualname__}({', '.join(positional)})")
    assert offenders == []
