"""A recurrent spiking layer's forward + backward against T: plifnet's fused layer, plifnet's step loop, snnTorch's
RLeaky, a SpikingJelly LIF neuron driven step by step, and the products-only limit.

Every case: input currents [T, 128, 256] (already W_in x + b), a recurrent 256 x 256 weight, a PLIF-like neuron with
a learnt leak where the library has one, forward and backward of sum(spikes * g) for a fixed g; float32; the median
of --repeats runs after one warm-up, all in one process. The products-only limit is the same loop's matrix products
and a ReLU (I[t] = X[t] + relu(I[t-1]) W^T) through autograd with `unbind`: what any step loop must at least do.

    python benchmarks/recurrent.py [--steps 100 784 1301] [--repeats 3] [--batch 128] [--neurons 256]
    python benchmarks/recurrent.py --psmnist     # the permuted sequential MNIST network's training step instead
"""

import argparse

import torch
from timing import median_seconds

from plifnet.neurons import PLIF
from plifnet.sequences import Recurrent


def plifnet_layer(neurons: int, backend: str):
    layer = Recurrent(neurons, neurons, PLIF(tau=2.0, backend=backend, channels=neurons))
    return lambda x: layer.neuron(x, feedback=layer.recurrent)


def products_only(neurons: int):
    weight = torch.nn.Parameter(torch.randn(neurons, neurons) / neurons**0.5)

    def run(x):
        state, out = torch.zeros_like(x[0]), []
        for x_t in x.unbind(0):
            state = x_t + torch.relu(state) @ weight.T
            out.append(state)
        return torch.stack(out)

    return run


def snntorch_rleaky(neurons: int):
    import snntorch

    lif = snntorch.RLeaky(beta=0.5, learn_beta=True, linear_features=neurons, reset_mechanism="zero")

    def run(x):
        spk, mem = lif.init_rleaky()
        out = []
        for x_t in x.unbind(0):
            spk, mem = lif(x_t, spk, mem)
            out.append(spk)
        return torch.stack(out)

    return run


def spikingjelly_loop(neurons: int):
    from spikingjelly.activation_based import functional, neuron

    lif = neuron.ParametricLIFNode(init_tau=2.0, detach_reset=True, step_mode="s")
    recurrent = torch.nn.Linear(neurons, neurons, bias=False)

    def run(x):
        functional.reset_net(lif)
        spike, out = torch.zeros_like(x[0]), []
        for t in range(x.shape[0]):  # SpikingJelly's own loops index per step
            spike = lif(x[t] + recurrent(spike))
            out.append(spike)
        return torch.stack(out)

    return run


CASES = {
    "plifnet fused": lambda n: plifnet_layer(n, "auto"),
    "plifnet step loop": lambda n: plifnet_layer(n, "reference"),
    "products only (limit)": products_only,
    "snnTorch RLeaky": snntorch_rleaky,
    "SpikingJelly PLIF loop": spikingjelly_loop,
}


def seconds(run, x, grad, repeats: int) -> float:
    def once():
        given = x.clone().requires_grad_()
        (run(given) * grad).sum().backward()

    return median_seconds(once, repeats)


def psmnist_step(repeats: int) -> None:
    """A training step (forward, backward, Adam) of configs/psmnist.yaml's network, 64-256-256 recurrent PLIF with a
    tau per neuron, batch 128, T = 784: fused against the step loop."""
    from plifnet.module import SpikingClassifier
    from plifnet.options import NeuronOptions
    from plifnet.sequences import SequenceNet

    x, y = torch.rand(784, 128, 1), torch.randint(0, 10, (128,))
    for backend in ("auto", "reference"):
        options = NeuronOptions(tau=20.0, per_channel=True, v_threshold=0.5, decay_input=False, backend=backend)
        net = SequenceNet(1, 10, hidden=[64, 256, 256], neuron="plif", options=options, readout="max")
        model = SpikingClassifier(net, loss="cross_entropy")
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)

        def step():
            optimizer.zero_grad()
            model.training_loss(model(x), y).backward()
            optimizer.step()

        name = "fused" if backend == "auto" else "step loop"
        print(f"PS-MNIST training step, {name:10} {median_seconds(step, repeats):.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 784, 1301])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--neurons", type=int, default=256)
    parser.add_argument("--psmnist", action="store_true", help="time the PS-MNIST network's training step instead")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.psmnist:
        return psmnist_step(args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}, {args.neurons} neurons")
    print(f"{'forward + backward (s)':24}" + "".join(f"{f'T = {t}':>10}" for t in args.steps) + "   vs fused")
    results = {}
    for name, make in CASES.items():
        try:
            run = make(args.neurons)
        except ImportError as error:
            print(f"{name:24} not installed ({error.name})")
            continue
        row = []
        for steps in args.steps:
            x = torch.rand(steps, args.batch, args.neurons) * 1.5
            grad = torch.randn(steps, args.batch, args.neurons)
            row.append(seconds(run, x, grad, args.repeats))
        results[name] = row
        ratio = row[-1] / results["plifnet fused"][-1]
        print(f"{name:24}" + "".join(f"{value:10.3f}" for value in row) + f"   {ratio:6.2f}x")


if __name__ == "__main__":
    main()
