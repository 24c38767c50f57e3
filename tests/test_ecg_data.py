"""ECG-QTDB (plifnet/data/ecg.py): read against a small file in the published layout written here with scipy
(and, where ../shared holds it, against the real files read with scipy in the test), per-step labels with the
unlabelled steps marked, the end marker not read as a crossing, batches time first, a missing file in one line."""

import numpy as np
import pytest
import torch
from scipy.io import loadmat, savemat

from plifnet.data import ECGDataModule
from plifnet.data.ecg import UNLABELLED
from plifnet.errors import MissingData


def write_files(folder, sequences=(12, 5), steps=40, seed=0):
    """QTDB_{train,test}.mat as the authors' repository has them: x [N, T, 4] int16 of 0/1 crossings with -1 at
    the last step of channel 0, y [N, T, 6] uint8 one-hot with some steps all zero."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in zip(("QTDB_train.mat", "QTDB_test.mat"), sequences):
        x = (rng.random((n, steps, 4)) < 0.1).astype(np.int16)
        x[:, -1, 0] = -1
        classes = rng.integers(0, 6, (n, steps))
        y = np.eye(6, dtype=np.uint8)[classes]
        y[:, :3] = 0  # the first steps carry no label
        savemat(
            folder / name, {"x": x, "y": y, "t": np.tile(np.arange(steps), (n, 1)), "max_i": np.full((n, 1), steps)}
        )
    return folder


def expected(path):
    """The file read here, by the rules the module states: crossings are the 1s, a step without a label is -1."""
    arrays = loadmat(str(path))
    x, y = arrays["x"], arrays["y"]
    labels = np.full(y.shape[:2], -1)
    for n, t in zip(*np.nonzero(y.sum(-1))):
        labels[n, t] = int(np.flatnonzero(y[n, t])[0])
    return (x == 1).astype(np.float32), labels


def test_the_sequences_and_their_per_step_labels(tmp_path):
    folder = write_files(tmp_path / "ECG-QTDB")
    data = ECGDataModule(root=str(tmp_path), num_workers=0, batch_size=4, val_fraction=0.25)
    data.setup("fit")
    x, labels = expected(folder / "QTDB_test.mat")
    got = [data.test_set[i] for i in range(len(data.test_set))]
    np.testing.assert_array_equal(np.stack([g[0].numpy() for g in got]), x)
    np.testing.assert_array_equal(np.stack([g[1].numpy() for g in got]), labels)
    assert (labels[:, :3] == UNLABELLED).all() and x[:, -1, 0].max() <= 1 and x.min() == 0  # the -1 marker is 0
    assert (len(data.train_set), len(data.val_set)) == (9, 3)  # 12 sequences, a quarter for validation
    batch, batch_labels = next(iter(data.train_dataloader()))
    assert tuple(batch.shape) == (40, 4, 4) and tuple(batch_labels.shape) == (40, 4)  # time first
    assert tuple(data.example_input().shape) == (40, 1, 4)


def test_a_missing_file_is_named_in_one_line(tmp_path):
    write_files(tmp_path / "ECG-QTDB")
    (tmp_path / "ECG-QTDB" / "QTDB_test.mat").unlink()
    with pytest.raises(MissingData, match=r"ECG-QTDB was not found in .*: no QTDB_test.mat\. Fix: --data.root DIR"):
        ECGDataModule(root=str(tmp_path)).setup("fit")


@pytest.mark.real_data
def test_the_real_files(shared_datasets):
    data = ECGDataModule(root=str(shared_datasets), num_workers=0, val_fraction=0)
    data.setup("fit")
    x, labels = expected(shared_datasets / "ECG-QTDB" / "QTDB_test.mat")
    assert (len(data.train_set), len(data.test_set)) == (618, 141) and data.sequence_shape == (1301, 4)
    assert torch.equal(data.test_set[7][0], torch.from_numpy(x[7])) and (data.test_set[7][1].numpy() == labels[7]).all()
    unlabelled = float((labels == UNLABELLED).mean())
    assert 0 < unlabelled < 0.15  # a few steps carry no label
