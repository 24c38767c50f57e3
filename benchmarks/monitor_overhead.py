"""Cost of plifnet's monitors (ResetState, TauMonitor, FiringRateMonitor, SynapticOps) and of the
divergence check (StopOnNonFinite: a sum over every gradient per step) on training and validation.

Trains the paper's MNIST network (batch 16, T = 8) on in-memory random images with no callbacks,
with StopOnNonFinite alone, and with all of them, alternating the three a few times in one process,
and prints the median time of a training step and of a validation batch, and their ratios to none.

    python benchmarks/monitor_overhead.py [--steps 30] [--repeats 3] [--tau-every 1] [--precision bf16-mixed]
"""

import argparse
import statistics
import time

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from plifnet.callbacks import FiringRateMonitor, ResetState, StopOnNonFinite, SynapticOps, TauMonitor
from plifnet.models import SpikingNet
from plifnet.module import SpikingClassifier


class Timer(L.Callback):
    def __init__(self):
        self.train, self.val = [], []

    def on_train_batch_start(self, *args):
        self._t = time.perf_counter()

    def on_train_batch_end(self, *args):
        self.train.append(time.perf_counter() - self._t)

    def on_validation_batch_start(self, *args):
        self._t = time.perf_counter()

    def on_validation_batch_end(self, *args):
        self.val.append(time.perf_counter() - self._t)


SETS = {
    "none": lambda tau_every: [],
    "StopOnNonFinite": lambda tau_every: [StopOnNonFinite()],
    "all": lambda tau_every: [
        ResetState(),
        TauMonitor(every_n_steps=tau_every),
        FiringRateMonitor(),
        SynapticOps(),
        StopOnNonFinite(),
    ],
}


def run(callback_set: str, steps: int, tau_every: int, precision: str, data) -> Timer:
    torch.manual_seed(0)
    timer = Timer()
    callbacks = SETS[callback_set](tau_every)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=steps // 2,
        num_sanity_val_steps=0,
        callbacks=callbacks + [timer],
        precision=precision,
        logger=L.pytorch.loggers.CSVLogger("/tmp/plifnet-bench"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(data, batch_size=16, shuffle=True, drop_last=True)
    trainer.fit(SpikingClassifier(SpikingNet.paper("mnist")), loader, DataLoader(data, batch_size=16))
    return timer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tau-every", type=int, default=1, help="TauMonitor.every_n_steps (1: the worst case)")
    parser.add_argument("--precision", default="32-true", help="Lightning's precision: 32-true or bf16-mixed")
    args = parser.parse_args()
    data = TensorDataset(torch.randn(16 * args.steps, 1, 28, 28), torch.randint(0, 10, (16 * args.steps,)))
    results = {name: Timer() for name in SETS}
    for _ in range(args.repeats):
        for name in SETS:
            timer = run(name, args.steps, args.tau_every, args.precision, data)
            results[name].train += timer.train[2:]  # the first steps warm up allocators
            results[name].val += timer.val[1:]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, MNIST network, batch 16, T = 8, "
        f"{args.repeats} x {args.steps} steps, TauMonitor every {args.tau_every} step(s), {args.precision}"
    )
    print(
        f"{'median (ms)':14}"
        + "".join(f"{name:>17}" for name in SETS)
        + "".join(f"{name + '/none':>22}" for name in list(SETS)[1:])
    )
    for stage in ("train", "val"):
        times = {name: statistics.median(getattr(results[name], stage)) for name in SETS}
        print(
            f"{stage + ' batch':14}"
            + "".join(f"{t * 1e3:17.1f}" for t in times.values())
            + "".join(f"{times[name] / times['none']:22.3f}" for name in list(SETS)[1:])
        )


if __name__ == "__main__":
    main()
