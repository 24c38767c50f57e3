"""Event-to-frame integration and frame caching (issue: event-camera data).

1. Integration of an N-MNIST-sized sample (4,000 events, 34 x 34) into T = 10 frames: plifnet's
   ``to_frames`` (split by number, numpy bincount) beside tonic's ``ToFrame(n_event_bins=10)``
   (which drops the remainder events; shown for speed only).
2. One pass over generated N-MNIST files through ``EventDataModule``: the first, uncached epoch
   (decode + integrate + write the cache) against a cached one.

    python benchmarks/event_frames.py [--files 300] [--repeats 200]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from event_files import random_events, write_nmnist  # noqa: E402

from plifnet.data.events import EventDataModule, to_frames  # noqa: E402
from plifnet.data.recordings import _events  # noqa: E402


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    events = _events(*random_events(4000, 34, seed=0))
    ours = median_time(lambda: to_frames(events, 10, (34, 34)), args.repeats)
    print(f"integration of 4,000 events into 10 frames of [2, 34, 34] (median of {args.repeats})")
    print(f"  plifnet to_frames          {ours * 1e6:8.1f} us   {4000 / ours / 1e6:6.1f} M events/s")
    try:
        import tonic.transforms

        to_frame = tonic.transforms.ToFrame(sensor_size=(34, 34, 2), n_event_bins=10)
        tonic_events = np.empty(len(events), [("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", bool)])
        for name in ("x", "y", "t", "p"):
            tonic_events[name] = events[name]
        theirs = median_time(lambda: to_frame(tonic_events), args.repeats)
        print(f"  tonic ToFrame(n_event_bins) {theirs * 1e6:7.1f} us   ratio tonic/plifnet {theirs / ours:.2f}")
    except Exception as error:  # tonic's API differs across versions; the figure above stands alone
        print(f"  tonic ToFrame: not measured ({error})")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "nmnist"
        for i in range(args.files):
            write_nmnist(root / "Test" / str(i % 10) / f"{i:05d}.bin", *random_events(4000, 34, seed=i))
        dm = EventDataModule(
            "nmnist",
            root=str(root),
            time_steps=10,
            num_workers=0,
            val_fraction=0,
            batch_size=16,
            cache_dir=str(Path(tmp) / "cache"),
        )
        dm.setup("test")
        epochs = []
        for _ in range(3):
            start = time.perf_counter()
            for _batch in dm.test_dataloader():
                pass
            epochs.append(time.perf_counter() - start)
    print(f"one epoch over {args.files} N-MNIST files (4,000 events each), batch 16, no workers")
    print(f"  first (decode, integrate, cache) {epochs[0] * 1e3:8.1f} ms")
    print(
        f"  cached (median of 2)             {statistics.median(epochs[1:]) * 1e3:8.1f} ms   "
        f"speed-up {epochs[0] / statistics.median(epochs[1:]):.1f}x"
    )


if __name__ == "__main__":
    main()
