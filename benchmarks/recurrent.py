"""A recurrent spiking layer's forward + backward against T: plifnet's fused layer, plifnet's step loop, snnTorch's
RLeaky, a SpikingJelly LIF neuron driven step by step, and the products-only limit.

Every case: input currents [T, 128, 256] (already W_in x + b), a recurrent 256 x 256 weight, a PLIF-like neuron with
a learnt leak where the library has one, forward and backward of sum(spikes * g) for a fixed g; float32; the median
of --repeats rounds after one warm-up, the cases timed in turns within each round, all in one process. The products-only limit is the same loop's matrix products
and a ReLU (I[t] = X[t] + relu(I[t-1]) W^T) through autograd with `unbind`: what any step loop must at least do.

    python benchmarks/recurrent.py [--steps 100 784 1301] [--repeats 3] [--batch 128] [--neurons 256]
    python benchmarks/recurrent.py --psmnist     # the permuted sequential MNIST network's training step instead
    python benchmarks/recurrent.py --psmnist --fit ../shared/datasets   # and plifnet fit's own step, same rounds
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from timing import interleaved_medians

from plifnet.kernels import keep_freed_memory_unless_opted_out
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


def pass_of(run, x, grad):
    """One forward and backward of ``run`` on ``x`` (a fresh leaf each time), weighted by ``grad``."""

    def once():
        given = x.clone().requires_grad_()
        (run(given) * grad).sum().backward()

    return once


class ProductsOnlyNet(torch.nn.Module):
    """The PS-MNIST network's products with a ReLU for the neuron: per layer the input product over all steps at once,
    then ``I[t] = X[t] + relu(I[t-1]) W_rec^T`` step by step (`unbind`), and the readout: the dense limit of a step."""

    def __init__(self, widths=(1, 64, 256, 256), classes: int = 10):
        super().__init__()
        pairs = list(zip(widths, widths[1:]))
        self.inputs = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in pairs)
        self.recurrent = torch.nn.ModuleList(torch.nn.Linear(b, b, bias=False) for _, b in pairs)
        self.output = torch.nn.Linear(widths[-1], classes)

    def forward(self, x):
        for linear, recurrent in zip(self.inputs, self.recurrent):
            state, out = None, []
            for x_t in linear(x).unbind(0):
                state = x_t if state is None else x_t + recurrent(torch.relu(state))
                out.append(state)
            x = torch.relu(torch.stack(out))
        return self.output(x).max(0).values


class SnnTorchNet(torch.nn.Module):
    """The PS-MNIST network in snnTorch: per layer the input product over all steps at once, then ``RLeaky`` (a learnt
    beta per neuron, its own recurrent Linear) step by step with `unbind`, the readout a max over time."""

    def __init__(self, widths=(1, 64, 256, 256), classes: int = 10):
        import snntorch

        super().__init__()
        pairs = list(zip(widths, widths[1:]))
        self.inputs = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in pairs)
        self.neurons = torch.nn.ModuleList(
            snntorch.RLeaky(beta=torch.full((b,), 0.95), learn_beta=True, linear_features=b, reset_mechanism="zero")
            for _, b in pairs
        )
        self.output = torch.nn.Linear(widths[-1], classes)

    def forward(self, x):
        for linear, neuron in zip(self.inputs, self.neurons):
            spike, mem = neuron.init_rleaky()
            out = []
            for x_t in linear(x).unbind(0):
                spike, mem = neuron(x_t, spike, mem)
                out.append(spike)
            x = torch.stack(out)
        return self.output(x).max(0).values


def fit_step(data_root: str, bf16: bool, steps: tuple[int, int] = (3, 13)) -> float:
    """Seconds of one training step of ``plifnet fit --config psmnist`` (its data, loop, logging and callbacks), from
    the wall times of two whole runs of ``steps`` training steps: start-up, imports and the run's end cancel."""
    bf16_config = ["--config", "trainer/bf16"] if bf16 else []
    walls = []
    with tempfile.TemporaryDirectory() as run_dir:
        for count in steps:
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "plifnet", "fit", "--config", "psmnist", *bf16_config, "--data.root", data_root,
                 "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(count),
                 "--trainer.limit_val_batches", "0", "--data.init_args.eval_test_every_epoch", "false",
                 "--trainer.default_root_dir", run_dir],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            walls.append(time.perf_counter() - start)
    return (walls[1] - walls[0]) / (steps[1] - steps[0])


def psmnist_step(repeats: int, bf16: bool, data_root: str | None = None) -> None:
    """A training step (forward, backward, Adam) of configs/psmnist.yaml's network, 64-256-256 recurrent PLIF with a
    tau per neuron, batch 128, T = 784: fused, the step loop, snnTorch's RLeaky network and the products-only limit;
    ``bf16``: every case under bf16 autocast (the products in bf16). With ``data_root`` (MNIST there), also
    ``plifnet fit``'s own step (:func:`fit_step`) in each round, beside one call of each other case."""
    from plifnet.module import SpikingClassifier
    from plifnet.options import NeuronOptions
    from plifnet.sequences import SequenceNet

    x, y = torch.rand(784, 128, 1), torch.randint(0, 10, (128,))
    models = {}
    for backend in ("auto", "reference"):
        options = NeuronOptions(tau=20.0, per_channel=True, v_threshold=0.5, decay_input=False, backend=backend)
        net = SequenceNet(1, 10, hidden=[64, 256, 256], neuron="plif", options=options, readout="max")
        models["plifnet fused" if backend == "auto" else "plifnet step loop"] = net
    models["products only (limit)"] = ProductsOnlyNet()
    try:
        models["snnTorch RLeaky"] = SnnTorchNet()
    except ImportError:
        print("snnTorch not installed")
    precision = "bf16 autocast" if bf16 else "float32"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; PS-MNIST training step, batch 128, T = 784, {precision}"
    )
    steps = {}
    for name, net in models.items():
        model = SpikingClassifier(net, loss="cross_entropy", classes=10)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)

        def step(model=model, optimizer=optimizer):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model.training_loss(model(x), y)
            loss.backward()
            optimizer.step()

        steps[name] = step
    if data_root is None:
        results = interleaved_medians(steps, repeats)  # in turns: the machine's speed drifts by 10-20 % between minutes
        for name, seconds in results.items():
            print(f"{name:24}{seconds:8.3f} s   {seconds / results['plifnet fused']:6.2f}x the fused step")
        return
    for step in steps.values():  # a warm-up call of each
        step()
    rounds = []
    for _ in range(repeats):  # plifnet fit's step and one call of each other case, in turns, per round
        times = {"plifnet fit": fit_step(data_root, bf16)}
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name] = time.perf_counter() - start
        rounds.append(times)
    for name in rounds[0]:
        seconds = statistics.median(times[name] for times in rounds)
        ratio = statistics.median(times[name] / times["plifnet fit"] for times in rounds)  # within a round
        print(f"{name:24}{seconds:8.3f} s   {ratio:6.2f}x plifnet fit's step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 784, 1301])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--neurons", type=int, default=256)
    parser.add_argument("--psmnist", action="store_true", help="time the PS-MNIST network's training step instead")
    parser.add_argument("--bf16", action="store_true", help="with --psmnist: under bf16 autocast")
    parser.add_argument("--fit", metavar="DATASETS", help="with --psmnist: also plifnet fit's step on MNIST there")
    args = parser.parse_args()
    torch.manual_seed(0)
    # as plifnet fit and the CPU kernels do: freed blocks stay in the process, for every case alike (no page faults)
    print(f"freed memory kept in the process: {keep_freed_memory_unless_opted_out()}")
    if args.psmnist:
        return psmnist_step(args.repeats, args.bf16, args.fit)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}, {args.neurons} neurons")
    print(f"{'forward + backward (s)':24}" + "".join(f"{f'T = {t}':>10}" for t in args.steps) + "   vs fused")
    runs = {}
    for name, make in CASES.items():
        try:
            runs[name] = make(args.neurons)
        except ImportError as error:
            print(f"{name:24} not installed ({error.name})")
    results = {name: [] for name in runs}
    for steps in args.steps:  # each T: the cases in turns (this machine's speed drifts between minutes)
        x = torch.rand(steps, args.batch, args.neurons) * 1.5
        grad = torch.randn(steps, args.batch, args.neurons)
        seconds = interleaved_medians({name: pass_of(run, x, grad) for name, run in runs.items()}, args.repeats)
        for name in runs:
            results[name].append(seconds[name])
    for name, row in results.items():
        ratio = row[-1] / results["plifnet fused"][-1]
        print(f"{name:24}" + "".join(f"{value:10.3f}" for value in row) + f"   {ratio:6.2f}x")


if __name__ == "__main__":
    main()
