import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from event_files import (
    aedat31_packet,
    hand_frames,
    random_events,
    write_aedat2,
    write_aedat4,
    write_aedat31,
    write_nmnist,
)

from conftest import ROOT
from plifnet.data.events import EventDataModule, to_frames
from plifnet.data.recordings import (
    CorruptRecording,
    read_aedat2_dvs128,
    read_aedat4,
    read_aedat31_polarity,
    read_gesture_npy,
    read_nmnist,
)
from plifnet.files import temporary_name


def fields(events):
    return [events[k].astype(np.int64).tolist() for k in ("x", "y", "t", "p")]


# --- decoders -------------------------------------------------------------------------------------

# Each decoder is checked against what we did not write: bytes encoded by hand from the format's
# published description, or another library's reader of the same file.


def test_nmnist_decoder_against_the_published_layout(tmp_path):
    """N-MNIST (Orchard et al. 2015, the dataset's README): 40 bits per event, big-endian: bits 39-32
    X, 31-24 Y, bit 23 polarity (1 = ON), bits 22-0 the timestamp in microseconds."""
    raw = bytes(
        [
            0x05,
            0x0A,
            0x80,
            0x01,
            0x02,  # x 5, y 10, ON, t 0x000102
            0x21,
            0x00,
            0x7F,
            0xFF,
            0xFF,  # x 33, y 0, OFF, t 2^23 - 1
            0x00,
            0x21,
            0xFF,
            0xFF,
            0xFF,
        ]
    )  # x 0, y 33, ON, t 2^23 - 1
    (tmp_path / "00001.bin").write_bytes(raw)
    assert fields(read_nmnist(tmp_path / "00001.bin")) == [
        [5, 33, 0],
        [10, 0, 33],
        [258, 2**23 - 1, 2**23 - 1],
        [1, 0, 1],
    ]


def test_aedat2_decoder_against_the_dvs128_address_layout(tmp_path):
    """AEDAT 2.0 (jAER): '#' header lines, then big-endian (uint32 address, uint32 timestamp); a
    DVS128 address holds the polarity in bit 0, x in bits 1-7 and y in bits 8-14. CIFAR10-DVS is
    read as SpikingJelly reads it: x = 127 - y_raw, y = 127 - x_raw, p = 1 - bit 0."""
    raw = (
        b"#!AER-DAT2.0\r\n# created by hand\r\n"
        + bytes.fromhex("00007F0BFFFFFFF0")  # y_raw 127, x_raw 5, bit 0 = 1 -> (0, 122, p 0), t 2^32 - 16
        + bytes.fromhex("0000010000000007")  # y_raw 1, x_raw 0, bit 0 = 0 -> (126, 127, p 1), t 7
        + bytes.fromhex("00004AFE80000000")
    )  # y_raw 74, x_raw 127, bit 0 = 0 -> (53, 0, p 1), t 2^31
    (tmp_path / "cifar10_cat_0.aedat").write_bytes(raw)
    events = read_aedat2_dvs128(tmp_path / "cifar10_cat_0.aedat")
    assert fields(events) == [[0, 126, 53], [122, 127, 0], [2**32 - 16, 7, 2**31], [0, 1, 1]]


def test_aedat31_decoder_against_the_published_layout(tmp_path):
    """AEDAT 3.1 (docs.inivation.com, "AEDAT 3.1"): after the '#' header, packets of a 28-byte
    little-endian header (int16 type, int16 source, int32 event size, ts offset, ts overflow,
    capacity, number, valid) and events. A polarity event (type 1, 8 bytes): uint32 data (bit 0
    valid, bit 1 polarity, y bits 2-16, x bits 17-31) and int32 timestamp, whose full value is
    ``overflow << 31 | timestamp``. Special events (type 0) and invalid events are not polarity data."""
    header = lambda kind, overflow, n, valid: struct.pack("<hhiiiiii", kind, 1, 8, 4, overflow, n, n, valid)
    data = lambda x, y, p, valid=1: (x << 17) | (y << 2) | (p << 1) | valid
    raw = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n"
    raw += header(1, 0, 2, 2) + struct.pack("<IiIi", data(1, 3, 0), 100, data(127, 2, 1), 2**31 - 1)
    raw += header(0, 0, 1, 1) + struct.pack("<Ii", 0x0000_0205, 150)  # a special event (type 0)
    raw += header(1, 1, 3, 2) + struct.pack("<IiIiIi", data(5, 8, 1), 5, data(6, 9, 1, valid=0), 6, data(0, 127, 0), 7)
    (tmp_path / "user01_led.aedat").write_bytes(raw)
    events = read_aedat31_polarity(tmp_path / "user01_led.aedat")
    assert fields(events) == [[1, 127, 5, 0], [3, 2, 8, 127], [100, 2**31 - 1, 2**31 + 5, 2**31 + 7], [0, 1, 1, 0]]


def test_aedat4_decoder_against_dv_processing(tmp_path):
    """AEDAT 4: our reader (tonic's, through the ``aedat`` package) and iniVation's dv-processing
    reader decode the same file to the same events (both polarities, timestamps past 2^32)."""
    import dv_processing as dv

    x, y, t, p = random_events(3000, 128, seed=4, t0=2**32 + 17)
    path = write_aedat4(tmp_path / "r.aedat4", x, y, t, p)
    recording, batches = dv.io.MonoCameraRecording(str(path)), []
    while recording.isRunning():
        batch = recording.getNextEventBatch()
        if batch is not None and len(batch):
            batches.append(batch.numpy())
    theirs = np.concatenate(batches)
    assert fields(read_aedat4(path)) == [
        theirs[k].astype(np.int64).tolist() for k in ("x", "y", "timestamp", "polarity")
    ]
    assert set(theirs["polarity"].tolist()) == {0, 1} and theirs["timestamp"].min() > 2**32


def test_gesture_npy_decoder_against_tonic(tmp_path):
    """tonic's DVS Gesture files, read by tonic's own ``DVSGesture.__getitem__`` and by ours."""
    from types import SimpleNamespace

    import tonic

    rows = np.array([[1, 2, 1, 5], [127, 0, 0, 7], [3, 127, 1, 6_000_000]])
    np.save(tmp_path / "3.npy", rows)
    dataset = SimpleNamespace(
        data=[tmp_path / "3.npy"],
        targets=[3],
        dtype=tonic.datasets.DVSGesture.dtype,
        transform=None,
        target_transform=None,
        transforms=None,
    )
    theirs, _ = tonic.datasets.DVSGesture.__getitem__(dataset, 0)
    assert fields(read_gesture_npy(tmp_path / "3.npy")) == [
        theirs[k].astype(np.int64).tolist() for k in ("x", "y", "t", "p")
    ]


# --- frames ---------------------------------------------------------------------------------------


def events_of(x, y, t, p):
    from plifnet.data.recordings import _events

    return _events(x, y, t, p)


def test_split_by_number_with_a_remainder():
    # N = 10, T = 3: d = 3 -> frames hold events [0, 3), [3, 6), [6, 10)
    x = np.arange(10) % 4
    frames = to_frames(events_of(x, np.zeros(10), np.arange(10), np.ones(10)), 3, (2, 4))
    assert frames.dtype == np.float32 and frames.shape == (3, 2, 2, 4)
    # x = 0 1 2 | 3 0 1 | 2 3 0 1
    assert frames[:, 1, 0].tolist() == [[1, 1, 1, 0], [1, 1, 0, 1], [1, 1, 1, 1]]
    assert frames[:, 0].sum() == 0 and frames.sum() == 10


def test_split_by_number_with_fewer_events_than_frames():
    frames = to_frames(events_of([1, 2], [0, 0], [5, 9], [0, 1]), 4, (1, 3))
    assert frames[:3].sum() == 0 and frames[3, 0, 0].tolist() == [0, 1, 0] and frames[3, 1, 0].tolist() == [0, 0, 1]


def test_split_by_time():
    # t from 100 to 400: dt = 300 // 3 = 100 -> [100, 200), [200, 300), [300, 400]
    t = np.array([100, 150, 199, 200, 299, 300, 400])
    frames = to_frames(events_of(np.zeros(7), np.zeros(7), t, np.zeros(7)), 3, (1, 1), split_by="time")
    assert frames[:, 0, 0, 0].tolist() == [3, 2, 2]


def test_split_by_number_matches_a_hand_loop():
    x, y, t, p = random_events(4001, 34, seed=1)
    frames = to_frames(events_of(x, y, t, p), 10, (34, 34))
    np.testing.assert_array_equal(frames, hand_frames(x, y, t, p, 10, 34))


@pytest.mark.parametrize("polarities", [(-1, 1), (0, 2), (False, True)])
def test_polarity_off_is_channel_0_and_on_is_channel_1_whatever_the_values(polarities):
    """Readers give OFF/ON as 0/1, -1/1 or booleans: p > 0 is channel 1 (ON), p <= 0 channel 0."""
    x, y, t, p = random_events(500, 8, seed=2)
    expected = to_frames(events_of(x, y, t, p), 4, (8, 8))
    coded = np.where(p > 0, polarities[1], polarities[0])
    np.testing.assert_array_equal(to_frames(events_of(x, y, t, coded), 4, (8, 8)), expected)
    assert expected[:, 0].sum() == (p == 0).sum() and expected[:, 1].sum() == (p == 1).sum()


def test_events_outside_the_sensor_are_an_error():
    with pytest.raises(CorruptRecording, match="outside the 34 x 34 sensor"):
        to_frames(events_of([40], [0], [0], [0]), 2, (34, 34))


# --- data modules ---------------------------------------------------------------------------------


def make_nmnist(root: Path, per_digit=3, test_per_digit=1):
    """A subset of N-MNIST in its original layout; returns the written events by path."""
    written = {}
    for split, count in (("Train", per_digit), ("Test", test_per_digit)):
        for digit in range(10):
            for i in range(count):
                x, y, t, p = random_events(
                    50 + 37 * i + digit, 34, seed=digit * 100 + i + (1000 if split == "Test" else 0)
                )
                path = write_nmnist(root / split / str(digit) / f"{i:05d}.bin", x, y, t, p)
                written[path] = (x, y, t, p)
    return written


def test_nmnist_subset_folder_loads_with_frames_of_the_paper(tmp_path):
    written = make_nmnist(tmp_path / "N-MNIST")
    dm = EventDataModule(
        "nmnist",
        root=str(tmp_path / "N-MNIST"),
        time_steps=10,
        num_workers=0,
        batch_size=4,
        cache_dir=str(tmp_path / "cache"),
        val_fraction=0.3,
    )
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (20, 10, 10)  # round(0.3 * 3) = 1 per digit
    frames, label = dm.test_set[7]
    path = dm.test_set.recordings[7].path
    assert label == int(path.parent.name)
    np.testing.assert_array_equal(frames.numpy(), hand_frames(*written[path], 10, 34))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (10, 4, 2, 34, 34) and x.dtype == torch.float32 and y.shape == (4,)


def test_cifar10dvs_split_by_recording_number(tmp_path):
    root = tmp_path / "CIFAR10DVS"
    for name in ("airplane", "truck"):
        for i in (0, 899, 900, 999):
            write_aedat2(root / name / f"cifar10_{name}_{i}.aedat", *random_events(30, 128, seed=i))
    dm = EventDataModule("cifar10dvs", root=str(root), time_steps=4, num_workers=0, val_fraction=0, cache=False)
    dm.setup("fit")
    train = [(r.path.name, r.label) for r in dm.train_set.recordings]
    assert train == [
        ("cifar10_airplane_0.aedat", 0),
        ("cifar10_airplane_899.aedat", 0),
        ("cifar10_truck_0.aedat", 9),
        ("cifar10_truck_899.aedat", 9),
    ]
    assert [r.path.name for r in dm.test_set.recordings][:2] == [
        "cifar10_airplane_900.aedat",
        "cifar10_airplane_999.aedat",
    ]
    assert dm.test_set[0][0].shape == (4, 2, 128, 128)


def test_cifar10dvs_tonic_aedat4_layout(tmp_path):
    events = random_events(40, 128, seed=3)
    write_aedat4(tmp_path / "CIFAR10DVS" / "cat" / "cifar10_cat_950.aedat4", *events)
    dm = EventDataModule("cifar10dvs", root=str(tmp_path), time_steps=5, num_workers=0, val_fraction=0, cache=False)
    dm.setup("test")  # found under root/CIFAR10DVS, where tonic keeps it
    frames, label = dm.test_set[0]
    assert label == 3
    np.testing.assert_array_equal(frames.numpy(), hand_frames(*events, 5, 128))


def test_dvs_gesture_labels_cut_at_csv_boundaries(tmp_path):
    t = np.array([999, 1000, 1500, 1999, 2000, 2500, 3000, 3999, 4000])
    x = np.arange(9) * 10
    write_aedat31(tmp_path / "user01_fluorescent.aedat", [aedat31_packet(x, np.zeros(9), t, np.ones(9))])
    (tmp_path / "user01_fluorescent_labels.csv").write_text(
        "class,startTime_usec,endTime_usec\n3,1000,2000\n11,3000,4000\n"
    )
    (tmp_path / "trials_to_train.txt").write_text("user01_fluorescent.aedat\nuser02_led.aedat\n")  # user02: not here
    (tmp_path / "trials_to_test.txt").write_text("user01_fluorescent.aedat\n")
    dm = EventDataModule("dvs_gesture", root=str(tmp_path), time_steps=1, num_workers=0, val_fraction=0, cache=False)
    dm.setup("fit")
    assert [r.label for r in dm.train_set.recordings] == [2, 10]
    first, second = dm.train_set[0][0], dm.train_set[1][0]
    assert first[0, 1].nonzero()[:, 1].tolist() == [10, 20, 30]  # t = 1000, 1500, 1999: start in, end out
    assert second[0, 1].nonzero()[:, 1].tolist() == [60, 70]  # t = 3000, 3999


def test_dvs_gesture_tonic_npy_layout(tmp_path):
    folder = tmp_path / "DVSGesture" / "ibmGestureTest" / "user24_led"
    folder.mkdir(parents=True)
    np.save(folder / "4.npy", np.array([[1, 2, 1, 5], [3, 4, 0, 7], [5, 6, 1, 9]]))
    dm = EventDataModule("dvs_gesture", root=str(tmp_path), time_steps=3, num_workers=0, val_fraction=0, cache=False)
    dm.setup("test")
    frames, label = dm.test_set[0]
    assert label == 4 and frames[0, 1, 2, 1] == 1 and frames[1, 0, 4, 3] == 1 and frames[2, 1, 6, 5] == 1


def test_cache_is_keyed_reused_and_never_stale(tmp_path):
    make_nmnist(tmp_path / "d", per_digit=1, test_per_digit=1)
    cache = tmp_path / "cache"

    def build(time_steps, split_by="number"):
        dm = EventDataModule(
            "nmnist",
            root=str(tmp_path / "d"),
            time_steps=time_steps,
            split_by=split_by,
            num_workers=0,
            val_fraction=0,
            cache_dir=str(cache),
        )
        dm.setup("fit")
        return dm

    first = build(10)
    frames_10 = first.test_set[0][0]
    files = sorted(cache.rglob("*.npy"))
    assert len(files) == 1
    calls = []
    second = build(10)
    second.test_set.read = lambda path: calls.append(path)  # a cache hit never reads the recording
    assert torch.equal(second.test_set[0][0], frames_10) and calls == []
    changed = build(4)  # another T: other frames, another cache folder
    assert changed.test_set[0][0].shape[0] == 4
    assert changed.test_set.cache != first.test_set.cache
    assert build(10, "time").test_set.cache not in (first.test_set.cache, changed.test_set.cache)
    # a recording rewritten in place is decoded again, not served from the old cache entry
    path = first.test_set.recordings[0].path
    write_nmnist(path, [1], [1], [0], [1])
    assert build(10).test_set[0][0].sum() == 1


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    make_nmnist(tmp_path / "d", per_digit=1, test_per_digit=1)
    dm = EventDataModule(
        "nmnist",
        root=str(tmp_path / "d"),
        time_steps=10,
        num_workers=0,
        val_fraction=0,
        cache_dir=str(tmp_path / "cache"),
    )
    dm.setup("fit")

    def crash(file, array):
        Path(file).write_bytes(b"\x93NUMPY half")  # a partial write, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        dm.test_set[0]
    monkeypatch.undo()
    assert not [p for p in (tmp_path / "cache").rglob("*.npy") if ".tmp." not in p.name]  # nothing that is read later
    frames = dm.test_set[0][0]  # decoded again, cached properly this time
    assert frames.sum() > 0 and len([p for p in (tmp_path / "cache").rglob("*.npy") if ".tmp." not in p.name]) == 1


def test_a_full_disk_under_the_frame_cache_is_one_line_and_the_cached_files_stay(run_cli, tmp_path):
    """Every cache write of this process goes to /dev/full (the kernel's own ENOSPC) except the one made
    before: cli.py fit ends in one line naming the cache file and the data options that fix it."""
    make_nmnist(tmp_path / "data", per_digit=1, test_per_digit=1)
    dm = EventDataModule("nmnist", root=str(tmp_path / "data"), time_steps=2, num_workers=0, val_fraction=0)
    dm.setup("fit")
    cached_before = dm.test_set._cache_file(dm.test_set.recordings[0])
    dm.test_set.frames(0)
    kept = cached_before.read_bytes()
    full = [dm.train_set._cache_file(r) for r in dm.train_set.recordings] + [
        dm.test_set._cache_file(r) for r in dm.test_set.recordings[1:]
    ]
    for path in full:
        temporary_name(path).symlink_to("/dev/full")  # in-process, so this pid's temporary names
    result = run_cli(
        "fit",
        "--config",
        ROOT / "configs" / "nmnist.yaml",
        "--data.root",
        tmp_path / "data",
        "--data.num_workers",
        "0",
        "--data.batch_size",
        "2",
        "--data.time_steps",
        "2",
        "--data.val_fraction",
        "0",
        "--trainer.max_epochs",
        "1",
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    failed = next(path for path in full if not temporary_name(path).is_symlink())  # the write that was tried
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: could not write the frame cache file {failed}: No space left on device. The files cached before "
        f"are intact. Fix: free disk space or make {dm.test_set.cache} writable, cache elsewhere with "
        f"--data.cache_dir DIR, or not at all with --data.cache false"
    )
    assert cached_before.read_bytes() == kept and not failed.exists()
    assert sorted(p.name for p in dm.test_set.cache.glob("*.npy") if not p.is_symlink()) == [cached_before.name]


def test_cache_can_be_disabled(tmp_path):
    make_nmnist(tmp_path / "d", per_digit=1, test_per_digit=1)
    dm = EventDataModule("nmnist", root=str(tmp_path / "d"), num_workers=0, val_fraction=0, cache=False)
    dm.setup("fit")
    dm.test_set[0]
    assert not list((tmp_path / "d").rglob("*.npy"))


def test_corrupt_truncated_and_empty_recordings(tmp_path):
    make_nmnist(tmp_path / "d", per_digit=2, test_per_digit=1)
    truncated = tmp_path / "d" / "Train" / "3" / "00001.bin"
    truncated.write_bytes(truncated.read_bytes()[:-2])
    (tmp_path / "d" / "Train" / "5" / "00000.bin").write_bytes(b"")
    dm = EventDataModule("nmnist", root=str(tmp_path / "d"), num_workers=0, val_fraction=0, cache=False)
    dm.setup("fit")
    index = [r.path for r in dm.train_set.recordings].index(truncated)
    with pytest.raises(CorruptRecording, match=rf"{truncated}: .* not a whole number of 5-byte N-MNIST events"):
        dm.train_set[index]

    skipping = EventDataModule(
        "nmnist", root=str(tmp_path / "d"), num_workers=0, val_fraction=0, cache=False, on_error="skip"
    )
    with pytest.warns(RuntimeWarning, match="skipped 2 corrupt recording"):
        skipping.setup("fit")
    assert len(skipping.train_set) == 18 and len(skipping.skipped) == 2
    assert truncated not in [r.path for r in skipping.train_set.recordings]


def test_missing_data_names_the_folder_and_layouts(tmp_path):
    dm = EventDataModule("dvs_gesture", root=str(tmp_path / "none"), num_workers=0)
    with pytest.raises(FileNotFoundError) as error:
        dm.setup("fit")
    message = str(error.value)
    assert str(tmp_path / "none") in message and "trials_to_train.txt" in message and "ibmGestureTrain" in message
    assert "--data.download true" in message and "--data.root" in message


def test_bad_arguments():
    with pytest.raises(ValueError, match="time_steps must be >= 1"):
        EventDataModule("nmnist", time_steps=0)
    with pytest.raises(ValueError, match="split_by must be"):
        EventDataModule("nmnist", split_by="count")
    with pytest.raises(ValueError, match="unknown dataset 'ncaltech'"):
        EventDataModule("ncaltech")


def make_cifar10dvs(root: Path):
    for label, name in enumerate(("airplane", "automobile")):
        for i in (0, 1, 900):
            write_aedat2(root / name / f"cifar10_{name}_{i}.aedat", *random_events(60, 128, seed=10 * label + i))


def make_dvs_gesture(root: Path):
    for user in ("user01_fluorescent", "user24_led"):
        x, y, t, p = random_events(300, 128, seed=len(user), t0=1_000_000)
        write_aedat31(root / f"{user}.aedat", [aedat31_packet(x, y, t, p)])
        (root / f"{user}_labels.csv").write_text(
            "class,startTime_usec,endTime_usec\n1,1000000,1100000\n5,1100000,1200000\n11,1200000,1300000\n"
        )
    (root / "trials_to_train.txt").write_text("user01_fluorescent.aedat\n")
    (root / "trials_to_test.txt").write_text("user24_led.aedat\n")


@pytest.mark.parametrize(
    "config,make", [("nmnist", make_nmnist), ("cifar10dvs", make_cifar10dvs), ("dvs_gesture", make_dvs_gesture)]
)
def test_cli_fit_on_generated_recordings(config, make, run_cli, tmp_path):
    """Each event config trains with one command on files written in its original format."""
    make(tmp_path / "data")
    result = run_cli(
        "fit",
        "--config",
        ROOT / "configs" / f"{config}.yaml",
        "--data.root",
        tmp_path / "data",
        "--data.num_workers",
        "0",
        "--data.batch_size",
        "2",
        "--data.time_steps",
        "2",
        "--data.val_fraction",
        "0",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "2",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "data" / "frames_cache").rglob("*.npy"))
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "test/acc" in header and "monitor/acc" in header and "tau/conv1" in header


def test_failed_download_gives_the_manual_route(tmp_path, monkeypatch):
    import tonic.datasets

    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(tonic.datasets, "NMNIST", offline)
    dm = EventDataModule("nmnist", root=str(tmp_path / "nm"), download=True, num_workers=0)
    with pytest.raises(FileNotFoundError, match=r"could not download nmnist into .*name resolution.*--data.root DIR"):
        dm.prepare_data()
