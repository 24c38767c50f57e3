"""Recurrent and adaptive spiking layers (plifnet/sequences.py, plifnet/adaptive.py) against plain per-step loops
written here from the equations in their docstrings, and against snnTorch's RLeaky and Norse's LSNN where their
equations coincide: spikes equal, gradients of every parameter (weights and time constants) to rounding."""

import copy
import math

import pytest
import torch

from plifnet.adaptive import ALIF, AdLIF
from plifnet.errors import UserError
from plifnet.neurons import IF, LIF, PLIF
from plifnet.options import NeuronOptions
from plifnet.sequences import Recurrent, SequenceNet
from plifnet.surrogates import FastSigmoid

T, N, F, H = 60, 3, 5, 7


def heaviside(x, alpha=2.0):
    """Heaviside (1 at 0) forward; backward the derivative of atan(pi/2 alpha x)/pi, the atan surrogate."""
    primitive = torch.atan(math.pi / 2 * alpha * x) / math.pi
    return (x >= 0).to(x.dtype) + (primitive - primitive.detach())


def plain_loop(layer: Recurrent, x, kind):
    """The recurrent layer, step by step: I[t] = W_in X[t] + b + W_rec S[t-1], then the neuron's equations."""
    neuron, o = layer.neuron, layer.neuron.options
    k = torch.sigmoid(neuron.w)
    if kind in ("alif", "adlif"):
        k_a = torch.sigmoid(neuron.w_adapt)
    v = torch.zeros(N, H, dtype=x.dtype)
    s = torch.zeros(N, H, dtype=x.dtype)
    a = torch.zeros(N, H, dtype=x.dtype)
    w = torch.zeros(N, H, dtype=x.dtype)
    out = []
    for t in range(T):
        i = x[t] @ layer.input.weight.T + layer.input.bias + s @ layer.recurrent.weight.T
        if kind == "adlif":
            w = w + k_a * (torch.tanh(neuron.coupling) * v - w) + 2 * torch.sigmoid(neuron.spike_coupling) * s
            i = i - w
        h = v + k * (i - v)
        theta = o.v_threshold + (o.adaptation * a if kind == "alif" else 0)
        s = heaviside(h - theta)
        v = h - theta * s.detach()  # soft reset, detached
        if kind == "alif":
            a = a + k_a * (s - a)
        out.append(s)
    return torch.stack(out)


@pytest.mark.parametrize("kind", ["plif", "alif", "adlif"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_recurrent_layer_is_the_plain_loop(kind, dtype):
    torch.manual_seed(0)
    options = NeuronOptions(
        tau=4.0, per_channel=True, tau_init="uniform", tau_spread=0.5, v_threshold=0.5, v_reset=None
    )
    if kind != "plif":
        options = options.replace(tau_adapt=9.0, adaptation=0.7 if kind == "alif" else 1.8)
    neuron = {"plif": PLIF, "alif": ALIF, "adlif": AdLIF}[kind](options=options, channels=H)
    layer = Recurrent(F, H, neuron).to(dtype)
    if kind == "adlif":  # away from their starting values, so that a wrong sign or factor shows
        with torch.no_grad():
            neuron.coupling.uniform_(-1, 1), neuron.spike_coupling.uniform_(-1, 1)
    x = (torch.rand(T, N, F, dtype=dtype) < 0.5).to(dtype) * 4
    spikes = layer(x)
    assert 0.02 < spikes.mean() < 0.8  # a test of firing layers
    expected = plain_loop(layer, x, kind)
    assert torch.equal(spikes, expected)
    weights = torch.randn_like(spikes)
    params = list(layer.parameters())
    got = torch.autograd.grad((spikes * weights).sum(), params)
    want = torch.autograd.grad((expected * weights).sum(), params)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    for (name, _), g, e in zip(layer.named_parameters(), got, want):
        assert e.abs().sum() > 0, name
        torch.testing.assert_close(g, e, rtol=tolerance, atol=tolerance, msg=name)


def test_in_bf16_the_products_are_bf16_and_the_neuron_float32_as_in_the_plain_loop():
    """Under bf16 autocast the layer's forward products run in bf16 and its neuron in float32: the plain loop that calls
    the layer's own Linear modules (torch's) the same way gives the same spikes, and gradients to bf16's precision."""
    torch.manual_seed(1)
    layer = Recurrent(F, H, PLIF(tau=3.0, v_threshold=0.5, v_reset=None, per_channel=True, channels=H))
    x = (torch.rand(T, N, F) < 0.5).float() * 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spikes = layer(x)
        currents, k = layer.input(x).float(), torch.sigmoid(layer.neuron.w)
        v, s, expected = torch.zeros(N, H), torch.zeros(N, H), []
        for t in range(T):
            h = v + k * (currents[t] + layer.recurrent(s.to(torch.bfloat16)) - v)
            s = heaviside(h - 0.5)
            v = h - 0.5 * s.detach()
            expected.append(s)
        expected = torch.stack(expected)
    assert spikes.dtype == torch.bfloat16 and spikes.float().mean() > 0.05
    assert torch.equal(spikes.float(), expected)
    weights = torch.randn(T, N, H)
    params = list(layer.parameters())
    got = torch.autograd.grad((spikes.float() * weights).sum(), params)
    want = torch.autograd.grad((expected * weights).sum(), params)
    for (name, _), g, e in zip(layer.named_parameters(), got, want):
        # rounded to bf16 at other places than this loop's (where its input current is made float32, the fused layer's
        # recurrent weight summed over 32 steps at once): to bf16's precision, not bit for bit
        assert (g - e).norm() < 0.02 * e.norm(), name


@pytest.mark.parametrize("kind", ["plif", "alif", "adlif"])
def test_in_bf16_each_fused_layer_is_its_neurons_step_loop_under_autocast(kind):
    """The fused layer against the same layer run by its neuron's own step loop (backend 'reference'), both under
    bf16 autocast: the same spikes, and the same gradients to float32 rounding (the fused backward's products are
    bf16, as autograd's for the loop), but the recurrent weight's: one bf16 product per 32 steps where autograd
    rounds each step's, so to bf16's precision."""
    torch.manual_seed(2)
    options = NeuronOptions(tau=3.0, v_threshold=0.5, v_reset=None, per_channel=True)
    if kind != "plif":
        options = options.replace(tau_adapt=9.0, adaptation=0.7 if kind == "alif" else 1.8)
    neuron = {"plif": PLIF, "alif": ALIF, "adlif": AdLIF}[kind]
    fused = Recurrent(F, H, neuron(options=options, channels=H))
    loop = Recurrent(F, H, neuron(options=options.replace(backend="reference"), channels=H))
    loop.load_state_dict(fused.state_dict())
    x, weights = (torch.rand(T, N, F) < 0.5).float() * 4, torch.randn(T, N, H)
    results = []
    for layer in (fused, loop):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            spikes = layer(x)
        results.append((spikes, torch.autograd.grad((spikes.float() * weights).sum(), list(layer.parameters()))))
    (spikes, got), (expected, want) = results
    assert torch.equal(spikes, expected) and spikes.float().mean() > 0.02
    for (name, _), g, e in zip(fused.named_parameters(), got, want):
        assert e.abs().sum() > 0, name
        assert (g - e).norm() < (0.02 if name == "recurrent.weight" else 1e-5) * e.norm(), name


def test_a_recurrent_lif_is_snntorchs_rleaky():
    """snnTorch 1.0 RLeaky, reset to zero, reset_delay=False: mem = beta mem + I + V(spk), spk = mem > thr, then
    mem = mem - spk mem, the spike not detached in the reset. plifnet: PLIF, decay_input false (H = V - k V + I),
    hard reset to 0, detach_reset false; beta = 1 - k, the input bias = the outer Linear's bias + RLeaky's
    recurrent bias. (By subtraction the two differ: where a reset leaves mem above the threshold, RLeaky subtracts
    the threshold again before the next comparison, and adds it back if no spike follows.)"""
    snntorch = pytest.importorskip("snntorch")
    torch.manual_seed(2)
    dtype = torch.float32  # snnTorch's spikes are float32
    fc = torch.nn.Linear(F, H).to(dtype)
    beta = 0.8
    rleaky = snntorch.RLeaky(
        beta=torch.tensor(beta, dtype=dtype), learn_beta=True, linear_features=H, reset_mechanism="zero",
        reset_delay=False, threshold=0.5,
    ).to(dtype)  # fmt: skip
    ours = Recurrent(F, H, PLIF(tau=1 / (1 - beta), v_threshold=0.5, v_reset=0.0, decay_input=False,
                               detach_reset=False, channels=H)).to(dtype)  # fmt: skip
    with torch.no_grad():
        ours.input.weight.copy_(fc.weight)
        ours.input.bias.copy_(fc.bias + rleaky.recurrent.bias)
        ours.recurrent.weight.copy_(rleaky.recurrent.weight)
    x = torch.rand(T, N, F, dtype=dtype) * 1.5
    spk, mem = rleaky.reset_mem()
    theirs = []
    for x_t in x:
        spk, mem = rleaky(fc(x_t), spk, mem)
        theirs.append(spk)
    theirs = torch.stack(theirs)
    spikes = ours(x)
    assert 0.05 < spikes.mean() < 0.8
    assert torch.equal(spikes, theirs)
    weights = torch.randn_like(spikes)
    (spikes * weights).sum().backward()
    (theirs * weights).sum().backward()
    torch.testing.assert_close(ours.input.weight.grad, fc.weight.grad)
    torch.testing.assert_close(ours.recurrent.weight.grad, rleaky.recurrent.weight.grad)
    # k = sigmoid(w) = 1 - beta: dL/dw = -dL/dbeta * k (1 - k)
    k = torch.sigmoid(ours.neuron.w.detach())
    torch.testing.assert_close(ours.neuron.w.grad, -rleaky.beta.grad * k * (1 - k))


def test_alif_is_norses_lsnn():
    """Norse's LSNN (feed-forward), dt = 1: its synaptic current with tau_syn = dt passes the input on one step
    later, and its threshold b decays to v_th before the comparison. With X[t] = input[t-1], v_leak = v_reset = 0,
    SuperSpike (Norse 1.1's backward is 1/(|x| + 1)^2 whatever its alpha: plifnet's fast_sigmoid at alpha 1) and
    detach_reset false, it is plifnet's ALIF (decay_input) with k = tau_mem_inv, k_adapt = tau_adapt_inv and
    adaptation = beta (1 - k_adapt) / k_adapt."""
    lsnn = pytest.importorskip("norse.torch.functional.lsnn")
    torch.manual_seed(3)
    dtype = torch.float64
    k, k_adapt, beta = 0.2, 0.1, 0.3
    p = lsnn.LSNNParameters(
        tau_syn_inv=torch.tensor(1.0, dtype=dtype), tau_mem_inv=torch.tensor(k, dtype=dtype, requires_grad=True),
        tau_adapt_inv=torch.tensor(k_adapt, dtype=dtype), v_th=torch.tensor(0.5, dtype=dtype),
        beta=torch.tensor(beta, dtype=dtype), method="super", alpha=25.0,
    )  # fmt: skip
    x = (torch.rand(T, N, H, dtype=dtype) * 1.2).requires_grad_()
    state = lsnn.LSNNFeedForwardState(
        v=torch.zeros(N, H, dtype=dtype), i=torch.zeros(N, H, dtype=dtype), b=torch.full((N, H), 0.5, dtype=dtype)
    )
    theirs = []
    for x_t in torch.cat([x, x[:1] * 0]):  # one step more: their input arrives a step late
        z, state = lsnn.lsnn_feed_forward_step(x_t, state, p, dt=1.0)
        theirs.append(z)
    theirs = torch.stack(theirs[1:])
    alif = ALIF(
        tau=1 / k, tau_adapt=1 / k_adapt, adaptation=beta * (1 - k_adapt) / k_adapt, v_threshold=0.5,
        detach_reset=False, surrogate=FastSigmoid(alpha=1.0),
    ).to(dtype)  # fmt: skip
    spikes = alif(x)
    assert 0.05 < spikes.mean() < 0.8
    assert torch.equal(spikes, theirs)
    weights = torch.randn_like(spikes)
    ours_x, ours_w = torch.autograd.grad((spikes * weights).sum(), [x, alif.w])
    their_x, their_k = torch.autograd.grad((theirs * weights).sum(), [x, p.tau_mem_inv])
    torch.testing.assert_close(ours_x, their_x)
    torch.testing.assert_close(ours_w, their_k * k * (1 - k))  # k = sigmoid(w)


def test_the_backward_of_a_long_sequence_grows_linearly():
    """No per-step indexing whose backward materialises the whole sequence: the autograd graph holds the same
    number of nodes per step at T = 50 and T = 200."""

    def nodes(steps):
        torch.manual_seed(0)
        net = SequenceNet(3, 4, hidden=[8], neuron="alif", options=NeuronOptions(per_channel=True), readout="mean")
        out = net(torch.rand(steps, 2, 3))
        seen, stack = set(), [out.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            stack.extend(next_fn for next_fn, _ in node.next_functions)
        kinds = [type(node).__name__ for node in seen]
        assert not any(name.startswith(("Select", "Index")) for name in kinds), set(kinds)
        return len(seen)

    short, long = nodes(50), nodes(200)
    assert (long - short) / 150 == pytest.approx((short - nodes(20)) / 30, rel=0.02)


def test_a_peers_neuron_is_refused_in_a_recurrent_layer_in_one_line():
    with pytest.raises(UserError, match="a recurrent layer needs a plifnet neuron .* give recurrent false"):
        Recurrent(3, 4, torch.nn.ReLU())


def test_a_fused_or_compiled_backend_asked_of_a_step_loop_is_refused_not_ignored():
    from plifnet.adaptive import ALIF

    with pytest.raises(UserError, match="backend 'cpu': a recurrent layer runs its own fused kernel"):
        Recurrent(3, 4, PLIF(backend="cpu", channels=4))
    with pytest.raises(UserError, match="backend 'compile': ALIF runs its step loop in PyTorch"):
        ALIF(backend="compile")
    Recurrent(3, 4, PLIF(backend="reference", channels=4))  # the loop it runs: fine


OPTION_CASES = {
    "plif, hard reset": (PLIF, dict(tau=3.0)),
    "plif per neuron, soft reset": (
        PLIF,
        dict(tau=5.0, per_channel=True, tau_init="uniform", v_reset=None, v_threshold=0.5),
    ),
    "plif, reset not detached": (PLIF, dict(tau=2.5, detach_reset=False)),
    "lif, input not decayed": (LIF, dict(tau=4.0, decay_input=False, v_threshold=1.5)),
    "if": (IF, dict(v_threshold=2.0)),
    "alif per neuron, soft reset": (
        ALIF,
        dict(
            tau=5.0, per_channel=True, tau_init="uniform", v_reset=None, v_threshold=0.5, adaptation=0.7, tau_adapt=9.0
        ),
    ),
    "alif, hard reset": (ALIF, dict(tau=3.0, adaptation=1.5, tau_adapt=6.0)),
    "alif, soft reset not detached": (ALIF, dict(tau=4.0, v_reset=None, detach_reset=False, adaptation=0.5)),
    "alif, input not decayed": (ALIF, dict(tau=4.0, decay_input=False, v_threshold=1.5, adaptation=1.0)),
    "adlif per neuron, soft reset": (
        AdLIF,
        dict(tau=5.0, per_channel=True, tau_init="uniform", v_reset=None, v_threshold=0.5, tau_adapt=9.0),
    ),
    "adlif, hard reset": (AdLIF, dict(tau=3.0, tau_adapt=6.0, v_threshold=0.3)),
    "adlif, soft reset not detached": (AdLIF, dict(tau=2.0, v_reset=None, detach_reset=False, v_threshold=0.15)),
    "adlif per neuron, input not decayed": (
        AdLIF,
        dict(tau=2.0, per_channel=True, decay_input=False, v_threshold=0.1, tau_adapt=30.0),
    ),
}


@pytest.mark.parametrize("case", OPTION_CASES)
def test_the_fused_recurrent_layer_is_the_step_loop(case):
    """The fused layer (one autograd node, kernels/recurrent.py) against the same layer on the step loop
    (backend 'reference'): spikes bit for bit, every gradient (inputs, both weights, tau) to float32 rounding."""
    cls, given = OPTION_CASES[case]
    torch.manual_seed(3)
    fused = Recurrent(F, H, cls(**given, channels=H))
    if cls is AdLIF:  # couplings away from their start (a = 0, b = 1), so that each term is seen
        with torch.no_grad():
            fused.neuron.coupling.uniform_(-1.5, 1.5)
            fused.neuron.spike_coupling.uniform_(-1.5, 1.5)
    loop = copy.deepcopy(fused)
    loop.neuron.options = loop.neuron.options.replace(backend="reference")
    x = (torch.rand(T, N, F) < 0.5).float() * 3
    x_fused, x_loop = x.clone().requires_grad_(), x.clone().requires_grad_()
    spikes, expected = fused(x_fused), loop(x_loop)
    fused_node = {ALIF: "RecurrentALIFBackward", AdLIF: "RecurrentAdLIFBackward"}.get(cls, "RecurrentMultiStepBackward")
    assert spikes.grad_fn.name() == fused_node  # the fused path ran
    assert 0.02 < expected.mean() < 0.8
    assert torch.equal(spikes, expected)
    weights = torch.randn_like(spikes)
    got = torch.autograd.grad((spikes * weights).sum(), [x_fused, *fused.parameters()])
    want = torch.autograd.grad((expected * weights).sum(), [x_loop, *loop.parameters()])
    names = ["x", *(name for name, _ in fused.named_parameters())]
    for name, g, e in zip(names, got, want, strict=True):
        assert e.abs().sum() > 0, name
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5, msg=name)


def test_the_fused_recurrent_layer_keeps_five_bytes_per_neuron_and_step():
    """What autograd keeps for the layer's backward grows by the current (float32) and the spikes (one byte) per
    neuron and step, the same at T = 100 and T = 784, and its graph has the same nodes at any T."""

    def kept(steps):
        torch.manual_seed(0)
        layer = Recurrent(4, 32, PLIF(tau=2.0, per_channel=True, channels=32))
        sizes = []

        def pack(tensor):
            sizes.append(tensor.numel() * tensor.element_size())
            return tensor

        x = torch.rand(steps, 8, 4)
        currents = layer.input(x).detach().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = layer.neuron(currents, feedback=layer.recurrent)
        return sum(sizes), out.grad_fn

    short, node_short = kept(100)
    long, node_long = kept(784)
    assert long - short == (784 - 100) * 8 * 32 * 5
    assert type(node_short) is type(node_long) and node_long.name() == "RecurrentMultiStepBackward"


@pytest.mark.parametrize("cls", [PLIF, ALIF, AdLIF])
def test_the_fused_layer_shows_every_steps_feedback_to_the_synaptic_counter(cls):
    """The recurrent Linear is called as a module at every step (its hooks see the spikes) on the fused path as on
    the step loop: the synaptic-operation counts are the same."""
    from plifnet.energy import SynapticCounter

    torch.manual_seed(5)
    fused = Recurrent(F, H, cls(tau=3.0, v_threshold=0.5, channels=H))
    loop = copy.deepcopy(fused)
    loop.neuron.options = loop.neuron.options.replace(backend="reference")
    x = (torch.rand(T, N, F) < 0.5).float() * 3
    counts = []
    for layer in (fused, loop):
        counter = SynapticCounter(layer).__enter__()
        with torch.no_grad():
            layer(x)
        counter.fold()
        counter.__exit__()
        counts.append({name: value.tolist() for name, value in counter.totals().items()})
    assert counts[0] == counts[1] and counts[0]


@pytest.mark.parametrize("opted_out", [False, True])
def test_a_fused_recurrent_layer_keeps_freed_memory_in_the_process_unless_opted_out(opted_out):
    """After a fused layer's first run the process reuses freed blocks: touching a 64 MiB tensor again page-faults
    none of its 16,384 pages, where glibc's default faults all of them in at every allocation (as it would the fused
    layers' buffers at every step). The fewest of three touches: a small block placed in the freed one can make one
    touch take fresh pages.
    ``PLIFNET_KEEP_FREED_MEMORY=0`` leaves glibc's default. A process of its own: the setting lasts a process."""
    import os
    import subprocess
    import sys

    script = """
import resource, torch
from plifnet.neurons import PLIF
from plifnet.sequences import Recurrent
layer = Recurrent(4, 8, PLIF(channels=8))
layer(torch.rand(5, 2, 4))
def touch():
    x = torch.empty(16 << 20)
    x.fill_(1.0)
    del x
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    touch()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults[1:]))
"""
    env = dict(os.environ, PLIFNET_KEEP_FREED_MEMORY="0" if opted_out else "1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    faults = int(result.stdout.split()[-1])
    assert faults >= 16_384 if opted_out else faults < 100, faults


@pytest.mark.parametrize("cls", [ALIF, AdLIF])
def test_a_subclass_that_overrides_a_hook_of_the_adaptive_step_runs_its_own_equations(cls):
    """The fused ALIF/adLIF layer computes its class's equations; a subclass overriding a hook that the step calls
    (here the reset) runs the step loop, so that its own reset is the one computed, not silently the fused one's."""

    class HalfReset(cls):
        def reset_with(self, h, spike, threshold):
            return h - 0.5 * threshold * spike.detach()

    torch.manual_seed(4)
    plain = Recurrent(F, H, cls(tau=3.0, v_threshold=0.5, channels=H))
    own = Recurrent(F, H, HalfReset(tau=3.0, v_threshold=0.5, channels=H))
    own.load_state_dict(plain.state_dict())
    x = (torch.rand(T, N, F) < 0.5).float() * 3
    fused, looped = plain(x), own(x)
    assert fused.grad_fn.name() == f"Recurrent{cls.__name__}Backward" and looped.grad_fn.name() == "StackBackward0"
    assert not torch.equal(fused, looped)  # the half reset changed the spikes: it was computed


@pytest.mark.parametrize("kind", ["plif", "alif", "adlif"])
def test_a_fused_layer_reads_an_input_of_any_layout_and_its_kernels_refuse_a_view_they_would_copy(kind):
    """The kernels work on numpy views of the tensors' memory: an input laid out otherwise ([N, T, F] transposed) gives
    the spikes and gradients of its contiguous copy, and a non-contiguous tensor handed to the kernels' views is
    refused (numpy would reshape it into a copy, and what a kernel wrote there would be lost)."""
    from plifnet.kernels import recurrent_cpu

    torch.manual_seed(4)
    options = NeuronOptions(tau=3.0, v_threshold=0.5, per_channel=True)
    neuron = {"plif": PLIF, "alif": ALIF, "adlif": AdLIF}[kind]
    layer = Recurrent(H, H, neuron(options=options, channels=H))
    batch_first = torch.rand(N, T, H) * 2
    results = []
    for x in (batch_first.transpose(0, 1), batch_first.transpose(0, 1).contiguous()):
        assert x.is_contiguous() == (len(results) == 1)
        x = x.detach().requires_grad_()
        spikes = layer.neuron(x, feedback=layer.recurrent)
        (grad,) = torch.autograd.grad((spikes * torch.linspace(-1, 1, H)).sum(), x)
        results.append((spikes, grad))
    (spikes, grad), (expected, expected_grad) = results
    assert torch.equal(spikes, expected) and 0.02 < spikes.mean() < 0.98
    assert torch.equal(grad, expected_grad)
    with pytest.raises(ValueError, match="contiguous tensors"):
        recurrent_cpu.steps(torch.zeros(T, N, H).transpose(1, 2))
