"""What the benchmark scripts share: the median time of a call (``from timing import median_seconds``; a script run as
``python benchmarks/NAME.py`` finds this file beside it), and of several calls taken in turns."""

import statistics
import time


def median_seconds(function, repeats: int) -> float:
    """The median time of ``function()`` over ``repeats`` calls after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(functions: dict, repeats: int) -> dict:
    """The median time of each of ``functions`` (name -> callable) over ``repeats`` rounds, each round calling every
    one once in turn, after one warm-up call of each: a machine whose speed drifts (a neighbour's load, the clock)
    shifts every case alike, where case after case it would shift their ratios."""
    for function in functions.values():
        function()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
