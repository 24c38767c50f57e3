"""What the benchmark scripts share: the median time of a call (``from timing import median_seconds``; a script run as
``python benchmarks/NAME.py`` finds this file beside it)."""

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
