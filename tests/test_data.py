"""Data: array-file loading, clear errors, seeded subsets, device augmentation."""
import os

import numpy as np
import pytest
import torch

from nslab import data


def test_load_subsets_are_random_and_seeded(data_dir):
    train, test = data.load_cifar100(data_dir, torch.device("cpu"), train_subset=100, test_subset=50, seed=3)
    assert train.x.shape == (100, 3, 32, 32) and train.x.dtype == torch.uint8 and test.y.dtype == torch.int64
    again, _ = data.load_cifar100(data_dir, torch.device("cpu"), train_subset=100, test_subset=50, seed=3)
    assert torch.equal(train.x, again.x)
    idx = data.subset_indices(128, 50, seed=4)
    assert not torch.equal(idx, torch.arange(50)), "a subset must not be the first N (test sets may be sorted)"
    full, _ = data.load_cifar100(data_dir, torch.device("cpu"))
    assert len(full) == 256


def test_subset_larger_than_data_names_the_parameter(data_dir):
    with pytest.raises(ValueError, match="train_subset=1000 is not allowed: the data has 256"):
        data.load_cifar100(data_dir, torch.device("cpu"), train_subset=1000)


def test_missing_data_says_what_was_expected(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(FileNotFoundError, match="cifar100_uint8.npz.*NSLAB_DATA_DIR"):
        data.load_arrays(str(tmp_path))


def test_corrupt_or_incomplete_array_file(tmp_path):
    path = tmp_path / "cifar100_uint8.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a usable CIFAR-100 array file"):
        data.load_arrays(str(tmp_path))
    np.savez(path, x_train=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"lacks the arrays \['y_train', 'x_test', 'y_test'\]"):
        data.load_arrays(str(tmp_path))
    np.savez(path, x_train=np.zeros((2, 32, 32), np.uint8), y_train=np.zeros(2, np.uint8),
             x_test=np.zeros((1, 32, 32, 3), np.uint8), y_test=np.zeros(1, np.uint8))
    with pytest.raises(ValueError, match="expected uint8 \\(N,32,32,3\\)"):
        data.load_arrays(str(tmp_path))


def test_augment_is_a_shifted_window_of_the_zero_padded_image():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).reshape(2, 3, 32, 32).to(torch.uint8)
    g = torch.Generator().manual_seed(0)
    out = data.augment(x, g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(2):  # every output must equal some crop (flipped or not) of the padded input
        crops = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)


def test_batches_cover_every_image_once_and_normalize(data_dir):
    train, _ = data.load_cifar100(data_dir, torch.device("cpu"))
    seen = torch.cat([y for _, y in data.batches(train, 100, torch.Generator().manual_seed(0), True, False)])
    assert sorted(seen.tolist()) == sorted(train.y.tolist())
    x, _ = next(data.batches(train, 256, torch.Generator(), False, False))
    expected = (train.x.double() / 255 - torch.tensor(data.MEAN).view(1, 3, 1, 1)) / torch.tensor(data.STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x.double(), expected, rtol=1e-5, atol=1e-5)


def test_write_synthetic_round_trip(tmp_path):
    path = data.write_synthetic(os.path.join(tmp_path, "cifar100_uint8.npz"), n_train=10, n_test=5)
    arrays = data.load_arrays(str(tmp_path))
    assert arrays["x_train"].shape == (10, 32, 32, 3) and len(arrays["y_test"]) == 5
    assert os.path.basename(path) == data.ARRAY_FILE
