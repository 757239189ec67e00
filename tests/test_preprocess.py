"""Preprocessing: reference numbers, train-only statistics, numpy/torch agreement, round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from jet_h5 import ArrayReader, sparse_images, write_jets

from mae_tracker.data.jetfile import JetImageReader, make_splits
from mae_tracker.data.preprocess import Preprocessor


def reference_transform(x: np.ndarray, mean, std, zero=1e-3, clip=500.0) -> np.ndarray:
    """The recipe written out one sample and one channel at a time, in float64."""
    out = np.zeros(x.shape, np.float64)
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            pixels = x[i, c].astype(np.float64)
            pixels[pixels < zero] = 0.0
            s = std[c] if std[c] > 0 else 1.0
            z = np.clip((pixels - mean[c]) / s, -clip, clip)
            low, high = z.min(), z.max()
            out[i, c] = (z - low) / (high - low) if high > low else 0.0
    return out


def zero_suppressed_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.where(images < 1e-3, 0.0, images.astype(np.float64))
    return z.mean(axis=(0, 2, 3)), z.std(axis=(0, 2, 3))


def test_transform_matches_per_sample_reference_including_clipping():
    x = sparse_images(20, c=3, h=12, w=12)
    x[3, 0, 5, 5] = 50.0  # with std 0.05 this is ~1000 sigma: clipped at 500
    x[4, 2] = 0.0  # an all-zero channel in one sample
    x[5, 1] = 7.0  # a constant, non-zero channel
    pre = Preprocessor(mean=[0.02, 0.1, 0.05], std=[0.05, 0.4, 0.3])
    expected = reference_transform(x, pre.mean, pre.std)
    got = pre.transform(x)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert (50.0 - 0.02) / 0.05 > 500  # the clip branch was exercised
    assert np.all(got[4, 2] == 0) and np.all(got[5, 1] == 0)
    assert np.isfinite(got).all() and got.min() >= 0 and got.max() <= 1


def test_clipping_changes_the_result():
    x = np.zeros((1, 1, 10, 10), np.float32)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 100.0, 0.5  # 1000 and 5 sigma
    clipped = Preprocessor(mean=[0.0], std=[0.1]).transform(x)
    unclipped = Preprocessor(mean=[0.0], std=[0.1], clip_sigma=1e9).transform(x)
    assert clipped[0, 0, 0, 1] == pytest.approx(5 / 500)
    assert unclipped[0, 0, 0, 1] == pytest.approx(5 / 1000)


def test_torch_and_numpy_agree():
    x = sparse_images(16, c=3, h=16, w=16, seed=4)
    pre = Preprocessor(mean=[0.05, 0.08, 0.02], std=[0.4, 0.6, 0.2])
    from_numpy = pre.transform(x)
    from_torch = pre.transform(torch.from_numpy(x))
    assert isinstance(from_torch, torch.Tensor) and from_torch.dtype == torch.float32
    np.testing.assert_allclose(from_torch.numpy(), from_numpy, atol=1e-6)
    from_double = pre.transform(torch.from_numpy(x).double())
    assert from_double.dtype == torch.float32


def test_zero_threshold_boundary_same_in_numpy_and_torch():
    x = np.zeros((1, 1, 10, 10), np.float32)
    x[0, 0, 0, :4] = [1e-3, np.nextafter(np.float32(1e-3), np.float32(0)), 2.0, -5.0]
    pre = Preprocessor(mean=[0.0], std=[1.0])
    for out in (pre.transform(x), pre.transform(torch.from_numpy(x)).numpy()):
        # 1e-3 is kept (scaled by the range 0..2), the value just below it and the negative one are 0
        np.testing.assert_allclose(out[0, 0, 0, :4], [5e-4, 0.0, 1.0, 0.0], rtol=1e-6)


def test_fit_equals_train_split_stats_and_ignores_test_outliers(tmp_path):
    images = sparse_images(60, c=3, h=12, w=12, seed=2)
    splits = make_splits(60, seed=0)
    train, test = splits["train"], splits["test"]
    path, _, _ = write_jets(tmp_path / "clean.h5", images)
    fitted = Preprocessor.fit(JetImageReader(path), train)
    mean, std = zero_suppressed_stats(images[train])
    np.testing.assert_allclose(fitted.mean, mean, rtol=1e-10)
    np.testing.assert_allclose(fitted.std, std, rtol=1e-10)

    polluted = images.copy()
    polluted[test] *= 1e4  # outliers in the test split only
    path2, _, _ = write_jets(tmp_path / "polluted.h5", polluted)
    refit = Preprocessor.fit(JetImageReader(path2), train)
    assert refit.mean == fitted.mean and refit.std == fitted.std
    everything = Preprocessor.fit(JetImageReader(path2), np.arange(60))
    assert everything.mean[0] > 100 * fitted.mean[0]  # the outliers would have mattered


def test_fit_suppresses_small_values_and_does_not_depend_on_batch_size():
    images = np.full((9, 2, 10, 10), 5e-4, np.float32)  # all below threshold ...
    images[:, 0, 0, 0] = 1.0  # ... except one pixel per image in channel 0
    reader = ArrayReader(images)
    big = Preprocessor.fit(reader, np.arange(9))
    small = Preprocessor.fit(reader, np.arange(9), batch_size=2)
    assert big.mean == pytest.approx([0.01, 0.0]) and big.std[1] == 0.0
    np.testing.assert_allclose(small.mean, big.mean, rtol=1e-12)
    np.testing.assert_allclose(small.std, big.std, rtol=1e-12)
    assert small.stats_batch_size == 2 and big.stats_batch_size == 4096
    out = big.transform(images)  # std 0 channel: finite, all zeros
    assert np.isfinite(out).all() and np.all(out[:, 1] == 0)


def test_fit_progress_bar(capsys):
    Preprocessor.fit(ArrayReader(sparse_images(5)), np.arange(5), progress=True)
    assert "preprocessing stats" in capsys.readouterr().err


def test_dict_round_trip_through_json():
    pre = Preprocessor(mean=[0.1, 0.2], std=[1.5, 0.0], clip_sigma=300.0, stats_batch_size=128)
    again = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert again == pre
    x = sparse_images(3, c=2)
    np.testing.assert_array_equal(again.transform(x), pre.transform(x))
    with pytest.raises(ValueError, match="unknown preprocessor fields"):
        Preprocessor.from_dict({**pre.to_dict(), "scale": 2})


def test_rejects_bad_shapes_and_parameters():
    pre = Preprocessor(mean=[0.0, 0.0], std=[1.0, 1.0])
    with pytest.raises(ValueError, match="expected a batch"):
        pre.transform(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ValueError):
        Preprocessor(mean=[0.0], std=[1.0, 1.0])
    with pytest.raises(ValueError):
        Preprocessor.fit(ArrayReader(sparse_images(2)), np.array([], dtype=np.int64))


@pytest.mark.parametrize("pixel_transform", ["none", "log1p"])
@pytest.mark.parametrize("pixel_scaling", ["sample-minmax", "channel"])
def test_inverse_transform_maps_model_space_back_to_the_stored_values(pixel_transform, pixel_scaling):
    rng = np.random.default_rng(0)
    scale = np.array([1.0, 10.0, 100.0], np.float32).reshape(1, 3, 1, 1)
    raw = (rng.exponential(1.0, (4, 3, 8, 8)) * (rng.random((4, 3, 8, 8)) < 0.3)).astype(np.float32) * scale
    p = Preprocessor(mean=[0.1, 1.0, 10.0], std=[1.0, 10.0, 100.0], pixel_transform=pixel_transform,
                     pixel_scaling=pixel_scaling)
    back = p.inverse_transform(p.transform(raw), raw)
    np.testing.assert_allclose(back, np.where(raw < p.zero_threshold, 0.0, raw), rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="one shape"):
        p.inverse_transform(p.transform(raw)[:2], raw)
