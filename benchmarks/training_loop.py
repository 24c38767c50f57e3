"""What a training run spends per step: ``cli.py fit`` against a plain loop over the same data.

MNIST, the paper's recipe (``configs/mnist.yaml``: batch 16, T 8, augmentation, 2 loader workers),
float32 or bf16-mixed (``configs/trainer/bf16.yaml``). ``cli.py fit`` brings Lightning, the default
trainer's callbacks and logger; the plain loop is what a user's own script does with plifnet's data
module and network (``StaticDataModule``, ``SpikingClassifier``, fused Adam, autocast). Each is timed
from outside, as the wall time of a whole child process for ``--steps N1 N2`` training steps;
(wall(N2) - wall(N1)) / (N2 - N1) is the time of a step with its data loading, and start-up, imports,
the kernels' compilation and the epoch's end (one checkpoint) cancel. The two alternate for
``--rounds`` rounds; figures are medians, ratios are taken within a round.

    python benchmarks/training_loop.py [--data-root ../shared/datasets] [--precision bf16|fp32] [--rounds 3] [--steps 50 250]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from plifnet.models import SpikingNet

ROOT = Path(__file__).resolve().parent.parent


def plain_loop(steps: int, precision: str, data_root: str) -> None:
    import torch

    from plifnet.data.static import StaticDataModule
    from plifnet.module import SpikingClassifier

    torch.manual_seed(2020)
    data = StaticDataModule("mnist", root=data_root, augment=True, batch_size=16, num_workers=2)
    data.setup("fit")
    model = SpikingClassifier(SpikingNet.paper("mnist"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    for step, (x, y) in enumerate(data.train_dataloader()):
        if step == steps:
            break
        optimizer.zero_grad()
        with autocast:
            rates = model(x)
        model._loss(rates.float(), y).backward()
        optimizer.step()


def command(kind: str, steps: int, precision: str, data_root: str, run_dir: str) -> list[str]:
    if kind == "plain":
        return [sys.executable, __file__, "--child", str(steps), precision, data_root]
    bf16 = ["--config", "configs/trainer/bf16.yaml"] if precision == "bf16" else []
    return [
        sys.executable,
        "cli.py",
        "fit",
        "--config",
        "configs/mnist.yaml",
        *bf16,
        "--data.root",
        data_root,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        str(steps),
        "--trainer.limit_val_batches",
        "0",
        "--data.init_args.eval_test_every_epoch",
        "false",
        "--trainer.default_root_dir",
        run_dir,
    ]


def wall_seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        plain_loop(int(sys.argv[2]), sys.argv[3], sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-root",
        default=str(ROOT.parent / "shared" / "datasets"),
        help="a folder with MNIST in torchvision's layout (MNIST/raw)",
    )
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, nargs=2, default=(50, 250), metavar=("N1", "N2"))
    args = parser.parse_args()
    if not (Path(args.data_root) / "MNIST" / "raw").is_dir():
        raise SystemExit(
            f"MNIST not found under {args.data_root} (MNIST/raw): give --data-root, or fetch it "
            f"with `python cli.py fit --config configs/mnist.yaml --data.download true`"
        )
    short, long = args.steps
    runs = []
    with tempfile.TemporaryDirectory() as run_dir:
        for _ in range(args.rounds):
            runs.append(
                {
                    kind: (
                        wall_seconds(command(kind, long, args.precision, args.data_root, run_dir))
                        - wall_seconds(command(kind, short, args.precision, args.data_root, run_dir))
                    )
                    / (long - short)
                    for kind in ("plain", "cli")
                }
            )
    print(
        f"MNIST, batch 16, T 8, {args.precision}: one training step with its data loading, from the wall time "
        f"of {long} - {short} steps; medians of {args.rounds} rounds"
    )
    print(f"{'run':28}{'ms/step':>9}{'images/s':>10}{'vs plain loop':>15}")
    for kind, name in (("plain", "plain loop, same data"), ("cli", "cli.py fit")):
        ms = statistics.median(run[kind] for run in runs) * 1e3
        ratio = statistics.median(run[kind] / run["plain"] for run in runs)
        print(f"{name:28}{ms:9.1f}{16e3 / ms:10.1f}{ratio:14.2f}x")


if __name__ == "__main__":
    main()
