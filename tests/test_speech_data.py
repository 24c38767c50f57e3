"""SHD and SSC (plifnet/data/speech.py) from small HDF5 files written here in the published layout (h5py,
variable-length arrays under spikes/times and spikes/units, labels): frames against a plain loop over the
spikes, the window's edges, SSC's own validation file, batches time first, a missing file in one line.
(tonic's SHD class would be the independent reader, but it downloads whatever the folder holds.)"""

import h5py
import numpy as np
import pytest
import torch

from plifnet.data import SpeechDataModule
from plifnet.errors import MissingData, UserError


def write_file(path, samples: list[tuple[np.ndarray, np.ndarray, int]]):
    """One release file: spikes/times (float seconds) and spikes/units (uint16) per sample, labels."""
    with h5py.File(path, "w") as file:
        times = file.create_dataset("spikes/times", (len(samples),), dtype=h5py.vlen_dtype(np.float32))
        units = file.create_dataset("spikes/units", (len(samples),), dtype=h5py.vlen_dtype(np.uint16))
        for i, (t, u, _) in enumerate(samples):
            times[i], units[i] = t.astype(np.float32), u.astype(np.uint16)
        file["labels"] = np.array([label for _, _, label in samples], dtype=np.uint16)


def random_samples(n, classes, seed):
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        count = int(rng.integers(5, 60))
        samples.append((np.sort(rng.uniform(0, 1.3, count)), rng.integers(0, 700, count), i % classes))
    return samples


def brute_force(times, units, steps, dt):
    counts = np.zeros((steps, 700), dtype=np.float32)
    for t, u in zip(times, units):
        step = int(np.floor(np.float64(np.float32(t)) / dt))
        if step < steps:
            counts[step, u] += 1
    return counts


def release(folder, dataset, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for k, split in enumerate(("train", "valid", "test") if dataset == "ssc" else ("train", "test")):
        written[split] = random_samples(20 if split == "train" else 6, 35 if dataset == "ssc" else 20, seed + k)
        write_file(folder / f"{dataset}_{split}.h5", written[split])
    return written


@pytest.mark.parametrize("dataset", ["shd", "ssc"])
def test_frames_are_the_spikes_counted_per_bin(dataset, tmp_path):
    written = release(tmp_path / dataset.upper(), dataset)
    data = SpeechDataModule(dataset, root=str(tmp_path), time_steps=100, dt=0.01, num_workers=0, batch_size=4)
    data.setup("fit")
    for i, (times, units, label) in enumerate(written["test"]):
        x, y = data.test_set[i]
        assert y == label and tuple(x.shape) == (100, 700)
        np.testing.assert_array_equal(x.numpy(), brute_force(times, units, 100, 0.01))
    kept = sum(
        int((np.floor(t.astype(np.float32).astype(np.float64) / 0.01) < 100).sum()) for t, _, _ in written["test"]
    )
    assert sum(float(data.test_set[i][0].sum()) for i in range(6)) == kept < sum(len(t) for t, _, _ in written["test"])
    if dataset == "ssc":  # the release's own validation file, whole
        assert len(data.val_set) == 6 and torch.equal(
            data.val_set[0][0], torch.from_numpy(brute_force(*written["valid"][0][:2], 100, 0.01))
        )
    else:  # a split of the training file
        assert len(data.train_set) + len(data.val_set) == 20
    x, y = next(iter(data.train_dataloader()))
    assert tuple(x.shape) == (100, 4, 700) and tuple(y.shape) == (4,)


def test_a_spike_on_a_bin_edge_goes_to_the_later_bin(tmp_path):
    folder = tmp_path / "SHD"
    folder.mkdir()
    samples = [(np.array([0.0, 0.25, 0.4999, 0.5, 0.75]), np.array([3, 3, 3, 3, 699]), 1)]
    for split in ("train", "test"):
        write_file(folder / f"shd_{split}.h5", samples * 4)
    data = SpeechDataModule("shd", root=str(folder), time_steps=3, dt=0.25, num_workers=0, val_fraction=0)
    data.setup("fit")
    x, _ = data.test_set[0]
    assert x[:, 3].tolist() == [1.0, 2.0, 1.0] and x[:, 699].tolist() == [0.0, 0.0, 0.0]  # 0.75 s is past 3 bins


def test_a_missing_file_is_named_in_one_line(tmp_path):
    release(tmp_path, "ssc")
    (tmp_path / "ssc_valid.h5").unlink()
    with pytest.raises(MissingData, match=r"SSC was not found in .*: it needs ssc_train.h5, ssc_valid.h5, ssc_test.h5"):
        SpeechDataModule("ssc", root=str(tmp_path)).setup("fit")
    with pytest.raises(UserError, match=r"--data.time_steps must be >= 1 and --data.dt > 0"):
        SpeechDataModule("shd", root=str(tmp_path), dt=0)


@pytest.fixture
def server(tmp_path):
    """A local HTTP server of a folder of gzipped release files (as the authors' site serves them)."""
    import functools
    import http.server
    import threading

    folder = tmp_path / "site"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_fetches_the_missing_files_when_asked(tmp_path, server):
    import gzip
    import shutil

    site, url = server
    written = release(tmp_path / "published", "shd", seed=5)
    for split in written:
        with (
            open(tmp_path / "published" / f"shd_{split}.h5", "rb") as f,
            gzip.open(site / f"shd_{split}.h5.gz", "wb") as g,
        ):
            shutil.copyfileobj(f, g)
    root = tmp_path / "data"
    with pytest.raises(MissingData, match="or --data.download true to fetch them from"):
        SpeechDataModule("shd", root=str(root), num_workers=0).setup("fit")
    data = SpeechDataModule("shd", root=str(root), download=True, url=url, num_workers=0, val_fraction=0)
    data.prepare_data()
    data.setup("fit")
    for split in written:
        assert (root / f"shd_{split}.h5").read_bytes() == (tmp_path / "published" / f"shd_{split}.h5").read_bytes()
    x, label = data.test_set[2]
    times, units, expected = written["test"][2]
    assert label == expected and torch.equal(x, torch.from_numpy(brute_force(times, units, 150, 0.01)))
    assert not list(root.glob(".*tmp*"))  # no partial file left


def test_a_failed_download_is_one_line_and_leaves_no_file(tmp_path, server):
    site, url = server  # serves nothing: 404
    data = SpeechDataModule("ssc", root=str(tmp_path / "data"), download=True, url=url, num_workers=0)
    with pytest.raises(MissingData, match=r"could not download http://127.0.0.1:\d+/ssc_train.h5.gz \(HTTP Error 404"):
        data.prepare_data()
    assert not list((tmp_path / "data").iterdir())
