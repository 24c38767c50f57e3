"""plifnet's command line: ``python cli.py {fit,validate,test,predict} --config configs/<dataset>.yaml``.

Everything is Lightning's ``LightningCLI``: any ``model.*``, ``data.*`` or ``trainer.*`` value of a
config can be overridden on the command line (``--model.neuron lif --model.tau 16``), and
``--print_config`` shows the complete resolved configuration.
"""

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from plifnet.kernels import keep_freed_cpu_memory
from plifnet.module import SpikingClassifier


def main(args=None) -> LightningCLI:
    keep_freed_cpu_memory()  # CPU training: no page faults for every step's activations
    return LightningCLI(
        SpikingClassifier,
        LightningDataModule,
        subclass_mode_data=True,
        args=args,
    )


if __name__ == "__main__":
    main()
