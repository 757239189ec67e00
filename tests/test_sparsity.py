"""Options for sparse detector images: weighted reconstruction loss, occupancy-aware masking,
log1p / per-channel preprocessing; each is 1 / "none" / "sample-minmax" = the earlier numbers."""

from __future__ import annotations

import dataclasses

import mlflow
import numpy as np
import pytest
import torch
import yaml
from jet_h5 import ArrayReader, sparse_images, write_jets

from mae_tracker.data.preprocess import Preprocessor
from mae_tracker.models.mae import MaskedAutoencoder, build_mae
from mae_tracker.models.masking import occupancy_weighted_noise, random_token_mask
from mae_tracker.models.variants import EncoderConfig, MAEConfig
from mae_tracker.sweep.spec import load_spec
from mae_tracker.train.config import DownstreamConfig, PretrainConfig, resolve_pixel_options
from mae_tracker.train.downstream import train_classifier
from mae_tracker.train.pretrain import pretrain


def tiny_mae(side: int = 8, **weights: float) -> MaskedAutoencoder:
    torch.manual_seed(0)
    encoder = EncoderConfig(kind="vit", img_size=(side, side), patch_size=4, in_chans=1, embed_dim=16, depth=1,
                            num_heads=2)
    return MaskedAutoencoder(encoder, decoder_dim=16, decoder_depth=1, decoder_heads=2, **weights)


# --- the weighted reconstruction loss ------------------------------------------------------

def one_hit_image() -> torch.Tensor:
    """8x8, one channel, 4 patches of 16 pixels; a single occupied pixel (1.0) in patch 0."""
    imgs = torch.zeros(1, 1, 8, 8)
    imgs[0, 0, 1, 2] = 1.0
    return imgs


def test_all_zero_prediction_is_penalised_by_the_occupied_pixel_weight():
    imgs = one_hit_image()
    mask = torch.ones(1, 4)  # every patch masked: the loss averages all four
    plain, weighted = tiny_mae(), tiny_mae(occupied_pixel_weight=10.0)
    zeros = torch.zeros(1, 4, 16)
    # on the hit, 0.3 on every empty pixel: right where it matters, wrong on the empty ones
    on_hit = torch.full((1, 4, 16), 0.3)
    on_hit[0] = plain.patchify(imgs)[0].where(plain.patchify(imgs)[0] > 0, on_hit[0])

    # by hand: plain = mean over patches of the per-patch MSE; weighted = 10 / (10 + 15) in patch 0
    assert plain.forward_loss(imgs, zeros, mask).item() == pytest.approx((1 / 16) / 4)
    assert weighted.forward_loss(imgs, zeros, mask).item() == pytest.approx((10 / 25) / 4)
    assert plain.forward_loss(imgs, on_hit, mask).item() == pytest.approx((15 * 0.09 / 16 + 3 * 0.09) / 4)
    assert weighted.forward_loss(imgs, on_hit, mask).item() == pytest.approx((15 * 0.09 / 25 + 3 * 0.09) / 4)
    # plain MSE prefers predicting nothing; the weighted loss prefers the prediction on the hit
    assert plain.forward_loss(imgs, zeros, mask) < plain.forward_loss(imgs, on_hit, mask)
    assert weighted.forward_loss(imgs, zeros, mask) > weighted.forward_loss(imgs, on_hit, mask)
    assert weighted.forward_loss(imgs, zeros, mask) > plain.forward_loss(imgs, zeros, mask)


def test_pixel_weight_one_is_the_plain_loss_bit_for_bit():
    torch.manual_seed(1)
    imgs = torch.from_numpy(sparse_images(6, c=1, h=8, w=8, occupancy=0.2))
    pred, mask = torch.randn(6, 4, 16), (torch.rand(6, 4) > 0.5).float()
    model = tiny_mae(occupied_pixel_weight=1.0)
    per_patch = (pred - model.patchify(imgs)).pow(2).mean(dim=-1)  # the loss before the option
    assert torch.equal(model.forward_loss(imgs, pred, mask), (per_patch * mask).sum() / mask.sum())
    noise = torch.rand(6, 4)
    assert torch.equal(model(imgs, 0.5, noise)[0], tiny_mae()(imgs, 0.5, noise)[0])


# --- occupancy-aware masking ----------------------------------------------------------------

def occupied_corner_images(n: int) -> torch.Tensor:
    """16x16 (16 patches of 4x4); one hit in each of 4 patches that differ per image."""
    rng = np.random.default_rng(0)
    imgs = torch.zeros(n, 1, 16, 16)
    for i in range(n):
        for patch in rng.choice(16, 4, replace=False):
            imgs[i, 0, 4 * (patch // 4) + 1, 4 * (patch % 4) + 2] = 1.0
    return imgs


@pytest.mark.parametrize("mask_ratio", [0.5, 0.75])
def test_occupied_patches_are_masked_more_often_with_exactly_the_requested_count(mask_ratio):
    imgs = occupied_corner_images(400)
    noise = torch.rand(400, 16, generator=torch.Generator().manual_seed(0))
    random, weighted = tiny_mae(16), tiny_mae(16, occupied_patch_weight=5.0)
    occupied = random.patch_occupancy(imgs)
    assert occupied.sum(dim=1).eq(4).all()
    with torch.no_grad():
        _, _, plain_mask = random(imgs, mask_ratio, noise)
        _, _, aware_mask = weighted(imgs, mask_ratio, noise)
        _, _, drawn_mask = weighted(imgs, mask_ratio)  # noise drawn inside, same rules
    masked = 16 - int(16 * (1 - mask_ratio) + 0.5)
    for mask in (plain_mask, aware_mask, drawn_mask):
        assert mask.sum(dim=1).eq(masked).all()
    plain_rate = plain_mask[occupied].mean().item()
    aware_rate = aware_mask[occupied].mean().item()
    assert plain_rate == pytest.approx(mask_ratio, abs=0.05)  # uniform: occupancy does not matter
    assert aware_rate > plain_rate + 0.1
    assert drawn_mask[occupied].mean().item() > plain_rate + 0.1
    assert aware_mask[~occupied].mean().item() < plain_rate  # the count is fixed: empty ones give way


def test_patch_weight_one_gives_the_old_masks():
    imgs = occupied_corner_images(8)
    noise = torch.rand(8, 16, generator=torch.Generator().manual_seed(3))
    model = tiny_mae(16, occupied_patch_weight=1.0)
    occupied = model.patch_occupancy(imgs)
    assert occupancy_weighted_noise(noise, occupied, 1.0) is noise
    with torch.no_grad():
        _, _, mask = model(imgs, 0.75, noise)
    assert torch.equal(mask, random_token_mask(8, 16, 0.75, noise=noise).mask)
    # weights > 1 only raise occupied patches' keys (u ** (1/w) >= u on [0, 1)), empty ones keep theirs
    keys = occupancy_weighted_noise(noise, occupied, 5.0)
    assert torch.equal(keys[~occupied], noise[~occupied]) and (keys[occupied] >= noise[occupied]).all()


def test_mae_config_carries_the_weights_and_old_dicts_load():
    model = tiny_mae(occupied_pixel_weight=4.0, occupied_patch_weight=2.0)
    saved = model.config.to_dict()
    assert saved["occupied_pixel_weight"] == 4.0 and saved["occupied_patch_weight"] == 2.0
    rebuilt = build_mae(MAEConfig.from_dict(saved))
    assert (rebuilt.occupied_pixel_weight, rebuilt.occupied_patch_weight) == (4.0, 2.0)
    old = {k: v for k, v in saved.items() if not k.startswith("occupied_")}
    assert MAEConfig.from_dict(old).occupied_pixel_weight == 1.0
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="occupied_patch_weight must be"):
            MAEConfig(encoder=model.config.encoder, decoder_dim=16, decoder_heads=2, occupied_patch_weight=bad)
        with pytest.raises(ValueError, match="occupied_pixel_weight must be"):
            PretrainConfig(occupied_pixel_weight=bad)


# --- log1p and per-channel scaling ---------------------------------------------------------

def test_log1p_channel_scaling_by_hand_numpy_equals_torch_and_zeros_stay_zero():
    x = np.zeros((2, 2, 2, 2), np.float32)
    x[0, 0, 0, 0] = np.e - 1  # log1p -> 1
    x[1, 0, 1, 1] = np.e ** 2 - 1  # log1p -> 2
    x[0, 1, 0, 1] = 3.0
    x[1, 1, 1, 0] = 5e-4  # below the zero-suppression threshold
    pre = Preprocessor.fit(ArrayReader(x), np.arange(2), pixel_transform="log1p", pixel_scaling="channel")
    t0 = np.array([1.0, 2.0] + [0.0] * 6)  # channel 0 over the 8 training pixels, after log1p
    assert pre.mean[0] == pytest.approx(t0.mean()) and pre.std[0] == pytest.approx(t0.std())
    assert pre.std[1] == pytest.approx(np.log1p(3.0) * np.sqrt(7) / 8)
    out = pre.transform(x)
    assert out[0, 0, 0, 0] == pytest.approx(1.0 / t0.std(), rel=1e-6)
    assert out[1, 0, 1, 1] == pytest.approx(2.0 / t0.std(), rel=1e-6)
    assert out[0, 1, 0, 1] == pytest.approx(np.log1p(3.0) / pre.std[1], rel=1e-6)
    assert (out[x < 1e-3] == 0).all() and np.count_nonzero(out) == 3  # no mean subtraction
    from_torch = pre.transform(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(from_torch, out, rtol=1e-6)
    assert np.array_equal(from_torch == 0, out == 0)


def test_channel_scaling_clips_and_log1p_minmax_follows_the_reference_recipe():
    x = sparse_images(12, c=3, h=8, w=8, seed=5)
    x[0, 0, 0, 0] = 1e6  # far beyond clip_sigma standard deviations
    clipped = Preprocessor(mean=[0.1] * 3, std=[1.0] * 3, clip_sigma=50.0, pixel_scaling="channel").transform(x)
    assert clipped[0, 0, 0, 0] == 50.0 and clipped.min() == 0.0
    np.testing.assert_allclose(clipped[1], np.where(x[1] < 1e-3, 0, x[1]), rtol=1e-6)  # std 1: the pixels

    mean, std = [0.05, 0.1, 0.02], [0.3, 0.5, 0.2]
    logged = Preprocessor(mean=mean, std=std, pixel_transform="log1p").transform(x)
    reference = Preprocessor(mean=mean, std=std).transform(np.log1p(np.where(x < 1e-3, 0, x)).astype(np.float32))
    np.testing.assert_allclose(logged, reference, atol=1e-6)  # log1p first, then the same min-max
    for options in ({"pixel_transform": "log1p"}, {"pixel_scaling": "channel"},
                    {"pixel_transform": "log1p", "pixel_scaling": "channel"}):
        pre = Preprocessor(mean=mean, std=std, **options)
        np.testing.assert_allclose(pre.transform(torch.from_numpy(x)).numpy(), pre.transform(x), rtol=1e-6,
                                   atol=1e-6)


def test_old_preprocessing_dicts_load_as_the_reference_recipe_and_bad_options_fail():
    old = {"format": "mae-tracker-preprocessor/1", "mean": [0.1], "std": [0.5], "zero_threshold": 1e-3,
           "clip_sigma": 500.0, "stats_batch_size": 4096}
    pre = Preprocessor.from_dict(old)
    assert (pre.pixel_transform, pre.pixel_scaling) == ("none", "sample-minmax")
    assert Preprocessor.from_dict(pre.to_dict()) == pre
    with pytest.raises(ValueError, match="pixel_transform must be one of none, log1p, got 'log'"):
        Preprocessor.fit(ArrayReader(sparse_images(2)), np.arange(2), pixel_transform="log")
    with pytest.raises(ValueError, match="pixel_scaling must be one of"):
        PretrainConfig(pixel_scaling="minmax")
    assert PretrainConfig().display_name() == "pretrain-vit-nano-mask0.75-lr0.001-seed0"  # as before
    assert PretrainConfig(pixel_transform="log1p", pixel_scaling="channel", occupied_pixel_weight=10,
                          occupied_patch_weight=5).display_name() == \
        "pretrain-vit-nano-mask0.75-pixw10-patchw5-lr0.001-seed0"
    resolved = resolve_pixel_options(PretrainConfig())
    assert resolved.display_name() == PretrainConfig().display_name()
    # the default is the best recipe measured; the reference work's is one option away
    assert (resolved.pixel_transform, resolved.pixel_scaling) == ("log1p", "channel")
    reference = resolve_pixel_options(PretrainConfig(pixel_scaling="sample-minmax"))
    assert (reference.pixel_transform, reference.pixel_scaling) == ("none", "sample-minmax")
    assert reference.display_name() == "pretrain-vit-nano-mask0.75-none-sample-minmax-lr0.001-seed0"
    assert resolve_pixel_options(PretrainConfig(pixel_transform="none")).pixel_scaling == "channel"


# --- through the arms and the sweep ------------------------------------------------------------

SMALL = dict(epochs=1, batch_size=16, image_every=0, image_jets=2, eval_jets=32, probe_train_jets=32,
             probe_val_jets=16, experiment="test-sparsity")


@pytest.fixture(scope="module")
def sparse_file(tmp_path_factory):
    path, _, _ = write_jets(tmp_path_factory.mktemp("sparse") / "jets.h5", sparse_images(200, seed=9))
    return path


@pytest.fixture(scope="module")
def sparse_pretrained(sparse_file):
    config = PretrainConfig(data=str(sparse_file), pixel_transform="log1p", pixel_scaling="channel",
                            occupied_pixel_weight=5.0, occupied_patch_weight=3.0, **SMALL)
    return pretrain(config, progress=False)


def test_pretrain_with_the_options_runs_and_logs_them(sparse_pretrained):
    run_id = sparse_pretrained["run_id"]
    params = mlflow.get_run(run_id).data.params
    assert params["pixel_transform"] == "log1p" and params["pixel_scaling"] == "channel"
    assert params["occupied_pixel_weight"] == "5.0" and params["occupied_patch_weight"] == "3.0"
    mae_config = mlflow.artifacts.load_dict(f"runs:/{run_id}/mae_config.json")
    assert mae_config["occupied_pixel_weight"] == 5.0 and mae_config["occupied_patch_weight"] == 3.0
    preprocessing = mlflow.artifacts.load_dict(f"runs:/{run_id}/preprocessing.json")
    assert (preprocessing["pixel_transform"], preprocessing["pixel_scaling"]) == ("log1p", "channel")
    assert np.isfinite(sparse_pretrained["test_loss"]) and 0 <= sparse_pretrained["val_probe_auc"] <= 1


def test_default_pretrain_logs_the_resolved_default_recipe(sparse_file):
    run_id = pretrain(PretrainConfig(data=str(sparse_file), **SMALL), progress=False)["run_id"]
    params = mlflow.get_run(run_id).data.params
    assert params["pixel_transform"] == "log1p" and params["pixel_scaling"] == "channel"
    config = mlflow.artifacts.load_dict(f"runs:/{run_id}/config.json")
    assert PretrainConfig.from_dict(config) == resolve_pixel_options(PretrainConfig(data=str(sparse_file), **SMALL))


def test_downstream_uses_the_encoders_preprocessing_and_refuses_a_different_one(sparse_pretrained, sparse_file):
    common = dict(data=str(sparse_file), encoder_uri=sparse_pretrained["encoder_uri"], epochs=1, batch_size=16,
                  experiment="test-sparsity")
    with pytest.raises(ValueError, match=r"^pixel_transform 'none' differs from the encoder's 'log1p'; "
                                         r"leave it empty to use the encoder's preprocessing$"):
        train_classifier(DownstreamConfig.for_arm("probe", pixel_transform="none", **common), progress=False)
    with pytest.raises(ValueError, match="pixel_scaling 'sample-minmax' differs"):
        train_classifier(DownstreamConfig.for_arm("probe", pixel_scaling="sample-minmax", **common),
                         progress=False)
    run_id = train_classifier(DownstreamConfig.for_arm("probe", pixel_transform="log1p", **common),
                              progress=False)["run_id"]
    preprocessing = mlflow.artifacts.load_dict(f"runs:/{run_id}/preprocessing.json")
    assert (preprocessing["pixel_transform"], preprocessing["pixel_scaling"]) == ("log1p", "channel")
    # without an encoder the options choose how the labelled jets' preprocessing is fitted
    scratch = train_classifier(DownstreamConfig.for_arm("scratch", data=str(sparse_file), pixel_transform="none",
                                                        pixel_scaling="channel", epochs=1, batch_size=16,
                                                        experiment="test-sparsity"),
                               progress=False)
    preprocessing = mlflow.artifacts.load_dict(f"runs:/{scratch['run_id']}/preprocessing.json")
    assert (preprocessing["pixel_transform"], preprocessing["pixel_scaling"]) == ("none", "channel")


def test_sweep_specs_search_the_options(tmp_path, sparse_file):
    spec = {"name": "sparsity", "experiment": "test-sparsity", "method": "random", "seed": 0, "n_trials": 2,
            "metric": {"name": "val_auc", "goal": "maximize"}, "objective": "probe",
            "parameters": {"occupied_pixel_weight": {"distribution": "log_uniform", "min": 1.0, "max": 30.0},
                           "occupied_patch_weight": [1.0, 3.0, 10.0],
                           "pixel_transform": {"values": ["none", "log1p"]},
                           "pixel_scaling": ["sample-minmax", "channel"]},
            "fixed": {"data": str(sparse_file), "epochs": 1}}
    path = tmp_path / "sparsity.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    parameters = load_spec(path).parameters
    assert parameters["pixel_transform"].values == ("none", "log1p")
    assert parameters["occupied_pixel_weight"].log and parameters["occupied_patch_weight"].values == (1.0, 3.0, 10.0)
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    assert {"occupied_pixel_weight", "occupied_patch_weight", "pixel_transform", "pixel_scaling"} <= fields
