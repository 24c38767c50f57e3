"""Synaptic operations and an energy estimate per image, for any network of Conv2d and Linear layers.

A layer fed by spikes works only where a spike arrives: each input spike adds one weight to every
neuron it reaches, one accumulate (AC) per synapse. Its synaptic operations (SOPs) are therefore

    SOPs = sum over input spikes of the spike's fan-out        (summed over all T steps)

where a convolution's fan-out is ``out_channels / groups`` times the number of output positions whose
window holds the input position: fewer at the borders, which ``rate x T x MACs`` would overcount. A
layer fed by real values (the encoder of images or event counts) multiplies densely: its operations
are MACs, ``T_layer x`` the dense MACs of one pass. Energy per image, as in SNN papers (Horowitz,
ISSCC 2014, 45 nm)::

    E_SNN = E_MAC x MACs(value-fed layers) + E_AC x SOPs(spike-fed layers)
    E_ANN = E_MAC x dense MACs of every layer, one pass per image

A layer counts as spike-fed for a batch whose input holds only 0s and 1s. Pooling, BatchNorm (folded
into the convolution on hardware) and the vote cost nothing here.

Operations alone flatter an SNN: an accumulate is cheap, but each one also moves a weight and a
membrane, and every neuron's membrane is read, leaked and written at every step whether it spikes or
not. The report therefore also counts memory accesses, one word of the technology's precision each, at
Horowitz's 45 nm SRAM figure (10 pJ per 64 bits of an 8 KB array, so 5 pJ per fp32 word, 2.5 fp16,
1.25 int8), with this accounting (ours, written out so that a reviewer can change it)::

    ANN, per MAC:              read a weight and an input               2 words
         per output, per pass: write the activation                     1 word
    SNN, per AC:               read a weight, read and write a membrane 3 words
         per neuron, per step: read and write its membrane             2 words, and 1 MAC (the leak)
         value-fed layers:     as the ANN, at every step they run

The ANN is the same network at the same precision (``45nm_int8``: int8 MACs against int8 ACs, a
bit-matched quantised ANN). Spike-fed ACs grow with the input firing rate; the report solves for the
rate at which the SNN's energy, memory included, equals the ANN's: above it the ANN wins
(``crossover_rate``, against the measured ``input_rate``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from plifnet import contract
from plifnet.contract import is_neuron, reset_state
from plifnet.errors import UserError
from plifnet.models import LayerNames

NEURONS = "neurons"  # the key of the neurons' membrane updates among a counter's totals

# (pJ per MAC, pJ per AC, pJ per memory access of one word), Horowitz, "Computing's energy problem",
# ISSCC 2014, 45 nm: MAC = multiply + add, AC = add; an 8 KB SRAM reads 64 bits for 10 pJ, b bits for b/64 of it
SRAM_PJ_PER_64_BITS = 10.0
TECHNOLOGIES = {
    "45nm_fp32": (4.6, 0.9, SRAM_PJ_PER_64_BITS * 32 / 64),
    "45nm_fp16": (1.5, 0.4, SRAM_PJ_PER_64_BITS * 16 / 64),
    "45nm_int8": (0.23, 0.03, SRAM_PJ_PER_64_BITS * 8 / 64),
}


@dataclass
class LayerEnergy:
    """One Conv2d or Linear layer, per image."""

    name: str  # conv1, ..., fc1: the i-th Conv2d / Linear of a SpikingNet; elsewhere the module path
    input: str  # "spikes", "values", or "mixed" (spikes in some batches only)
    macs: float  # dense MACs of the same layer in an ANN: one pass per image, or one per step for sequences
    sops: float  # operations performed over all steps: ACs for spike input, MACs for real-valued input
    input_rate: float  # fraction of the input's elements that are spikes (nan for real-valued input)
    energy_pj: float  # E_AC x ACs + E_MAC x MACs
    ann_energy_pj: float  # E_MAC x dense MACs
    memory_pj: float = 0.0  # the SNN's memory accesses: 3 per AC; as the ANN's for real-valued input
    ann_memory_pj: float = 0.0  # the ANN's: 2 per MAC, 1 per output


@dataclass
class EnergyReport:
    """Per-layer rows and totals per image; ``str(report)`` is a table, :meth:`to_csv` writes it."""

    layers: list[LayerEnergy]
    technology: str
    images: int
    neuron_updates: float = 0.0  # membrane updates per image: neurons x steps
    neuron_pj: float = 0.0  # their energy: a MAC (the leak) and 2 memory accesses each

    macs = property(lambda self: sum(layer.macs for layer in self.layers))
    sops = property(lambda self: sum(layer.sops for layer in self.layers))
    energy_pj = property(lambda self: sum(layer.energy_pj for layer in self.layers))
    ann_energy_pj = property(lambda self: sum(layer.ann_energy_pj for layer in self.layers))
    with_memory_pj = property(
        lambda self: sum(layer.energy_pj + layer.memory_pj for layer in self.layers) + self.neuron_pj
    )
    ann_with_memory_pj = property(lambda self: sum(layer.ann_energy_pj + layer.ann_memory_pj for layer in self.layers))

    def rates(self) -> tuple[float, float]:
        """``(input_rate, crossover_rate)``: the firing rate of the spike-fed layers' inputs (their mean,
        weighted by their ACs), and that rate where the SNN's energy with memory would equal the ANN's,
        every spike-fed layer's rate scaled by the same factor (0: the SNN loses at any rate; inf: no
        spike-fed layer)."""
        fed = [layer for layer in self.layers if layer.input == "spikes"]
        acs = sum(layer.sops for layer in fed)
        rate = sum(layer.sops * layer.input_rate for layer in fed) / acs if acs else 0.0
        scaling = sum(layer.energy_pj + layer.memory_pj for layer in fed)  # proportional to the rate
        fixed = self.with_memory_pj - scaling
        if not scaling:
            return rate, math.inf
        return rate, max(0.0, (self.ann_with_memory_pj - fixed) / scaling) * rate

    def totals(self) -> dict[str, float]:
        input_rate, crossover = self.rates()
        return {
            "macs": self.macs,
            "sops": self.sops,
            "energy_uj": self.energy_pj / 1e6,
            "ann_energy_uj": self.ann_energy_pj / 1e6,
            "ann_to_snn": self.ann_energy_pj / max(self.energy_pj, 1e-30),
            "energy_with_memory_uj": self.with_memory_pj / 1e6,
            "ann_energy_with_memory_uj": self.ann_with_memory_pj / 1e6,
            "ann_to_snn_with_memory": self.ann_with_memory_pj / max(self.with_memory_pj, 1e-30),
            "input_rate": input_rate,
            "crossover_rate": crossover,
        }

    def summary(self) -> str:
        t = self.totals()
        operations = compared(t["energy_uj"], t["ann_energy_uj"])
        with_memory = compared(t["energy_with_memory_uj"], t["ann_energy_with_memory_uj"])
        return (
            f"per image ({self.technology}, {self.images} images): SNN {t['energy_uj']:.4g} uJ "
            f"({t['sops'] / 1e6:.4g} M ops), ANN {t['ann_energy_uj']:.4g} uJ ({t['macs'] / 1e6:.4g} M MACs): "
            f"{operations}; with memory access: SNN {t['energy_with_memory_uj']:.4g} uJ, "
            f"ANN {t['ann_energy_with_memory_uj']:.4g} uJ ({with_memory}); the ANN wins above "
            f"an input firing rate of {t['crossover_rate']:.4g} (now {t['input_rate']:.4g})"
        )

    def to_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, list(asdict(self.layers[0])) if self.layers else ["name"])
            writer.writeheader()
            for layer in self.layers:
                writer.writerow(
                    {
                        key: (f"{value:.8g}" if isinstance(value, float) else value)
                        for key, value in asdict(layer).items()
                    }
                )
            writer.writerow(
                {"name": "neurons", "sops": f"{self.neuron_updates:.8g}", "memory_pj": f"{self.neuron_pj:.8g}"}
            )
            writer.writerow(
                {
                    "name": "total",
                    "macs": f"{self.macs:.8g}",
                    "sops": f"{self.sops:.8g}",
                    "energy_pj": f"{self.energy_pj:.8g}",
                    "ann_energy_pj": f"{self.ann_energy_pj:.8g}",
                    "memory_pj": f"{self.with_memory_pj - self.energy_pj:.8g}",
                    "ann_memory_pj": f"{self.ann_with_memory_pj - self.ann_energy_pj:.8g}",
                }
            )

    def __str__(self) -> str:
        lines = [f"{'layer':<8} {'input':<7} {'MACs':>12} {'ops':>12} {'rate':>7} {'SNN uJ':>9} {'ANN uJ':>9}"]
        for layer in self.layers:
            rate = "-" if math.isnan(layer.input_rate) else f"{layer.input_rate:.4f}"
            lines.append(
                f"{layer.name:<8} {layer.input:<7} {layer.macs:>12.0f} {layer.sops:>12.0f} {rate:>7} "
                f"{layer.energy_pj / 1e6:>9.4f} {layer.ann_energy_pj / 1e6:>9.4f}"
            )
        return "\n".join(lines + [self.summary()])


def compared(snn: float, ann: float) -> str:
    """The SNN's energy against the ANN's, as a sentence true in its direction: ``7.9x less`` or ``7.9x more``."""
    if snn <= ann:
        return f"the SNN uses {ann / max(snn, 1e-30):.3g}x less energy"
    return f"the SNN uses {snn / max(ann, 1e-30):.3g}x more energy"


def energy_costs(technology: str | tuple[float, ...]) -> tuple[str, float, float, float]:
    """``(name, pJ per MAC, pJ per AC, pJ per memory word)`` from a name of :data:`TECHNOLOGIES` or
    numbers: ``(MAC, AC)`` (no memory term) or ``(MAC, AC, memory word)``."""
    if isinstance(technology, str):
        if technology not in TECHNOLOGIES:
            raise UserError(
                f"unknown technology {technology!r}; choose one of {sorted(TECHNOLOGIES)} or give "
                f"(pJ per MAC, pJ per AC[, pJ per memory word])"
            )
        return (technology, *TECHNOLOGIES[technology])
    mac, ac, memory = (*(float(v) for v in technology), 0.0)[:3]
    return f"{mac:g} pJ/MAC, {ac:g} pJ/AC, {memory:g} pJ/word", mac, ac, memory


class SynapticCounter:
    """Counts, with forward hooks, the operations of every Conv2d and Linear of ``model`` over the
    batches it sees while attached (``with SynapticCounter(model) as counter: ...``). Counts stay on the
    model's device (no synchronisation per batch) and are exact below 2**24 spikes per input element.

    The hooks append each call's counts to ``pending`` and read no Python state (a compiled network
    would guard on it, and compile again for every new value); :meth:`fold` adds them to the totals
    (:meth:`totals` does), :meth:`discard` drops them (a batch that is not to be counted)."""

    FIELDS = ("acs", "value_macs", "spikes", "elements", "steps", "spike_batches", "value_batches")

    def __init__(self, model: nn.Module):
        # named as tau and firing rates name the layers (plifnet.callbacks.spiking_layers): conv1, ..., fc1 in a
        # network of layer tokens, where the i-th Conv2d feeds the i-th conv neuron; the module path elsewhere
        ordinal = any(callable(getattr(m, "spiking_layers", None)) for m in model.modules())
        layers, name = {}, LayerNames()
        for path, module in model.named_modules():
            kind = "conv" if isinstance(module, nn.Conv2d) else "fc" if isinstance(module, nn.Linear) else None
            if kind:
                layers[name(kind) if ordinal else path.removeprefix("net.")] = module
        self.layers = layers
        self.neurons = [module for module in model.modules() if is_neuron(module)]
        # a network for sequences (plifnet.sequences) is weighed against an ANN that runs every step, an RNN; a
        # network of images against one that runs once per image
        self.every_step = any(getattr(module, "ann_runs_every_step", False) for module in model.modules())
        # per layer its FIELDS; NEURONS: the neurons' membrane updates (first field), summed the same way
        self.counts: dict[str, torch.Tensor | float] = dict.fromkeys(
            [*layers, *([NEURONS] if self.neurons else [])], 0.0
        )
        self.dense: dict[str, int] = {}  # dense MACs of one sample at one step
        self.outputs: dict[str, int] = {}  # output elements of one sample at one step
        self._fan_out: dict[tuple, torch.Tensor] = {}
        self.handles: list = []
        self.pending: list[tuple[str, torch.Tensor]] = []  # (layer, counts) of each call not yet folded

    def __enter__(self) -> "SynapticCounter":
        self.handles = [module.register_forward_hook(self._hook(name)) for name, module in self.layers.items()]
        self.handles += [neuron.register_forward_hook(self._count_updates) for neuron in self.neurons]
        return self

    def _count_updates(self, module, inputs, output):
        spikes = contract.spikes(module, output)
        updates = torch.zeros(len(self.FIELDS), dtype=torch.float64, device=spikes.device)
        updates[0] = spikes.numel()
        self.pending.append((NEURONS, updates))

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _hook(self, name: str):
        def count(module, inputs, output):
            self.pending.append((name, self._count(module, inputs[0].detach(), output.shape, name)))

        return count

    def fold(self) -> None:
        """Add the calls since the last fold to the totals."""
        for name, counts in self.pending:
            self.counts[name] = self.counts[name] + counts
        self.pending.clear()

    def discard(self) -> None:
        """Forget the calls since the last fold."""
        self.pending.clear()

    def _count(self, module: nn.Module, x: torch.Tensor, output_shape, name: str) -> torch.Tensor:
        """``FIELDS`` of one call, as a float64 tensor."""
        if isinstance(module, nn.Conv2d):
            per_step = module.in_channels * x.shape[-2] * x.shape[-1]
            out_h, out_w = output_shape[-2:]
            self.dense[name] = (
                module.out_channels
                * out_h
                * out_w
                * (module.in_channels // module.groups)
                * module.kernel_size[0]
                * module.kernel_size[1]
            )
            self.outputs[name] = module.out_channels * out_h * out_w
        else:
            per_step = module.in_features
            self.dense[name] = module.in_features * module.out_features
            self.outputs[name] = module.out_features
        steps = x.numel() // per_step  # samples x time steps in this call
        # 1 where the input is only 0s and 1s (x (x - 1) is 0 exactly there): kept as a tensor, so that
        # counting never waits for the device; two products and a reduction, 3-6x faster on the CPU than
        # ((x == 0) | (x == 1)).all(), whose boolean temporaries do not vectorise
        low, high = torch.aminmax(x * (x - 1))
        spike_fed = ((low == 0) & (high == 0)).double()
        # per input element: its number of spikes over the batch (exact in float32 below 2**24 calls)
        counts = x.reshape(steps, -1).sum(0, dtype=torch.float32).double() * spike_fed
        if isinstance(module, nn.Conv2d):
            per_position = counts.view(module.in_channels, *x.shape[-2:]).sum(0)
            acs = (per_position * self._conv_fan_out(module, tuple(x.shape[-2:]), x.device)).sum() * (
                module.out_channels // module.groups
            )
        else:
            acs = counts.sum() * module.out_features
        value_fed = 1 - spike_fed
        return torch.stack(
            [
                acs,
                value_fed * steps * self.dense[name],
                counts.sum(),
                spike_fed * x.numel(),
                spike_fed.new_tensor(steps),
                spike_fed,
                value_fed,
            ]
        )

    def _conv_fan_out(self, conv: nn.Conv2d, size: tuple[int, int], device) -> torch.Tensor:
        """``[H, W]``: how many output positions read each input position: the adjoint of the
        convolution with an all-ones kernel (a transposed convolution) applied to all-ones outputs,
        once per layer and size. No autograd: the hook also runs inside a compiled network."""
        key = (id(conv), size)
        if torch.compiler.is_compiling() or key not in self._fan_out:  # compiled: no cache to guard on
            kernel, stride, dilation = conv.kernel_size, conv.stride, conv.dilation
            reach = [dilation[i] * (kernel[i] - 1) for i in (0, 1)]  # the kernel's extent - 1
            if isinstance(conv.padding, str):  # 'valid', or 'same' (stride 1; the odd one more on the right)
                padding = [0, 0] if conv.padding == "valid" else [reach[i] // 2 for i in (0, 1)]
                padded = [size[i] + (reach[i] if conv.padding == "same" else 0) for i in (0, 1)]
            else:
                padding, padded = conv.padding, [size[i] + 2 * conv.padding[i] for i in (0, 1)]
            outputs = [(padded[i] - reach[i] - 1) // stride[i] + 1 for i in (0, 1)]
            fan_out = F.conv_transpose2d(
                torch.ones(1, 1, *outputs, dtype=torch.float64, device=device),
                torch.ones(1, 1, *kernel, dtype=torch.float64, device=device),
                stride=stride,
                padding=padding,
                dilation=dilation,
            )[0, 0]
            # the last rows and columns that no output reads (a stride that does not divide) read none
            self._fan_out[key] = F.pad(fan_out, (0, size[1] - fan_out.shape[1], 0, size[0] - fan_out.shape[0]))
        return self._fan_out[key]

    def totals(self) -> dict[str, torch.Tensor]:
        """Per layer, the ``FIELDS`` counted so far (zeros for a layer that saw no batch), and the neurons'
        updates under ``NEURONS``."""
        self.fold()
        return {
            name: value if torch.is_tensor(value) else torch.zeros(len(self.FIELDS), dtype=torch.float64)
            for name, value in self.counts.items()
        }

    def report(
        self,
        images: int,
        technology: str | tuple[float, ...] = "45nm_fp32",
        totals: dict[str, torch.Tensor] | None = None,
    ) -> EnergyReport:
        """The per-image report of ``images`` images (``totals``: counts summed over processes, if any)."""
        technology, mac_pj, ac_pj, word_pj = energy_costs(technology)
        totals = dict(totals or self.totals())
        updates = float(totals.pop(NEURONS, torch.zeros(1))[0]) / images
        rows = []
        for name, fields in totals.items():
            acs, value_macs, spikes, elements, steps, spike_batches, value_batches = (float(v) for v in fields.cpu())
            if not steps:
                continue
            kind = "mixed" if spike_batches and value_batches else "spikes" if spike_batches else "values"
            dense, outputs = self.dense.get(name, 0), self.outputs.get(name, 0)
            passes = value_macs / dense if dense else 0.0  # samples x steps fed by values
            ann_passes = steps / images if self.every_step else 1.0
            macs = dense * ann_passes
            rows.append(
                LayerEnergy(
                    name=name,
                    input=kind,
                    macs=float(macs),
                    sops=(acs + value_macs) / images,
                    input_rate=spikes / elements if elements and not value_batches else float("nan"),
                    energy_pj=(acs * ac_pj + value_macs * mac_pj) / images,
                    ann_energy_pj=macs * mac_pj,
                    memory_pj=(3 * acs + 2 * value_macs + outputs * passes) * word_pj / images,
                    ann_memory_pj=(2 * macs + outputs * ann_passes) * word_pj,
                )
            )
        return EnergyReport(rows, technology, images, updates, updates * (mac_pj + 2 * word_pj))


@torch.no_grad()
def estimate(model: nn.Module, x: torch.Tensor, technology: str | tuple[float, ...] = "45nm_fp32") -> EnergyReport:
    """MACs, SOPs, input firing rate and energy per image of every Conv2d/Linear of ``model`` on the
    batch ``x``: images ``[N, C, H, W]`` or event frames ``[T, N, C, H, W]``, in eval mode.

    ``technology``: a name of :data:`TECHNOLOGIES` or ``(pJ per MAC, pJ per AC[, pJ per memory word])``.
    """
    images = x.shape[1] if x.dim() == 5 else x.shape[0]
    was_training = model.training
    model.eval()
    reset_state(model)
    try:
        with SynapticCounter(model) as counter:
            model(x)
    finally:
        reset_state(model)
        model.train(was_training)
    return counter.report(images, technology)
