"""A study's settings: the grid shorthand ``NEURON:TAU`` (the paper's ablation), named settings of any
``plifnet fit`` overrides, a settings file (named settings, a product of axes, seeds) and the seeds."""

from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from plifnet.errors import UserError

GRID = ("plif:2", "plif:16", "lif:2", "lif:16")  # the paper's ablation: PLIF tau0 and LIF tau in {2, 16}
NEURON, TAU = "--model.net.neuron", "--model.net.options.tau"  # the options of the grid's shorthand NEURON:TAU


@dataclass(frozen=True)
class Setting:
    """One task of a study: a named set of ``plifnet fit`` overrides, run with one seed."""

    name: str  # folder name (with the seed), wandb run name
    overrides: tuple[str, ...]
    seed: int
    label: str = ""  # the row of the results table and the curve of the plots (default: the name)

    @property
    def folder(self) -> str:
        return f"{self.name}_seed{self.seed}"

    @property
    def title(self) -> str:
        return self.label or self.name

    def option(self, name: str) -> str | None:
        """The value the overrides give the option ``name`` (:data:`NEURON`, :data:`TAU`; the last one), or None."""
        value = None
        for i, arg in enumerate(self.overrides):
            if arg == name and i + 1 < len(self.overrides):
                value = self.overrides[i + 1]
            elif arg.startswith(f"{name}="):
                value = arg.partition("=")[2]
        return value


def checked_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
        raise SystemExit(f"error: setting name {name!r} must be a folder name: letters, digits and _ . + - only")
    return name


def parse_grid(grid: list[str], seeds: list[int]) -> list[Setting]:
    """The shorthand ``NEURON:TAU`` (``plif:2``): ``--model.net.neuron NEURON --model.net.options.tau TAU``."""
    settings = []
    for item in grid:
        neuron, _, tau = item.partition(":")
        if neuron not in ("plif", "lif") or not tau:
            raise SystemExit(f"error: grid entry {item!r} is not NEURON:TAU with NEURON plif or lif, e.g. plif:2")
        try:
            value = float(tau)
        except ValueError:
            raise SystemExit(f"error: grid entry {item!r}: tau {tau!r} is not a number") from None
        label = f"{neuron.upper()} tau{'0' if neuron == 'plif' else ''}={value:g}"
        settings += [
            Setting(f"{neuron}_tau{value:g}", (NEURON, neuron, TAU, f"{value:g}"), seed, label) for seed in seeds
        ]
    return settings


def parse_settings(pairs: list[list[str]], seeds: list[int]) -> list[Setting]:
    """``--setting NAME "OVERRIDES"`` pairs."""
    settings = []
    for name, overrides in pairs:
        try:
            words = tuple(shlex.split(overrides))
        except ValueError as error:  # an unbalanced quote
            raise SystemExit(
                f"error: setting {name!r}: its overrides {overrides!r} cannot be split into options "
                f"({error}); close the quote, or quote a value with spaces as '--option \"a b\"'"
            ) from None
        settings += [Setting(checked_name(name), words, seed) for seed in seeds]
    return settings


def checked_seeds(seeds, where: str) -> list[int]:
    """Seeds as whole numbers (one number is one seed), or the line that names the bad one."""
    seeds = seeds if isinstance(seeds, list) else [seeds]
    bad = [seed for seed in seeds if isinstance(seed, bool) or not isinstance(seed, int)]
    if bad:
        raise SystemExit(
            f"error: {where}: seed {bad[0]!r} is not a whole number; give seeds as a list of whole "
            f"numbers, e.g. seeds: [2020, 2021]"
        )
    return seeds


class NamedTwice(UserError):
    pass


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last one, so a
    setting written twice would silently be one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise NamedTwice(f"{key!r} is given twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_settings_file(path: Path, seeds: list[int]) -> list[Setting]:
    """A YAML file of ``settings`` (name: overrides), ``axes`` (a product: ``model.net.options.tau: [2, 16]``, every
    combination one setting named after its values, ``plif_tau2``) and ``seeds`` (replacing ``--seeds``)."""
    try:
        spec = yaml.load(Path(path).read_text(), Loader=UniqueKeyLoader) or {}
    except NamedTwice as error:
        raise SystemExit(f"error: {path}: {error}; every setting and option needs its own name") from None
    except (OSError, yaml.YAMLError) as error:
        raise SystemExit(f"error: cannot read the settings file {path}: {error}") from None
    if (
        not isinstance(spec, dict)
        or not set(spec) <= {"settings", "axes", "seeds"}
        or not all(isinstance(spec.get(key) or {}, dict) for key in ("settings", "axes"))
    ):
        raise SystemExit(
            f"error: {path} must be a mapping of settings (name: overrides), axes (option: [values]) "
            f"and seeds (see README, 'Studies')"
        )
    seeds = checked_seeds(spec.get("seeds", seeds), f"{path}")
    named = spec.get("settings") or {}
    pairs = [
        [name, " ".join(overrides) if isinstance(overrides, list) else str(overrides)]
        for name, overrides in named.items()
    ]
    settings = parse_settings(pairs, seeds)
    axes = spec.get("axes") or {}
    combinations = itertools.product(*(axes[key] if isinstance(axes[key], list) else [axes[key]] for key in axes))
    for values in combinations if axes else ():  # the product of no axes is one empty setting, not none
        parts = [
            str(value) if key.split(".")[-1] == "neuron" else f"{key.split('.')[-1]}{value}"
            for key, value in zip(axes, values)
        ]
        overrides = tuple(arg for key, value in zip(axes, values) for arg in (f"--{key}", str(value)))
        settings += [Setting(checked_name("_".join(parts)), overrides, seed) for seed in seeds]
    return settings
