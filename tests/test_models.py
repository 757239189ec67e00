"""Models: shapes for every variant, masking, leak-freedom, loss support, configs, classifier."""

from __future__ import annotations

import json

import pytest
import torch

from mae_tracker.models import (
    VARIANTS,
    EncoderConfig,
    JetClassifier,
    MAEConfig,
    MaskedAutoencoder,
    build_encoder,
    build_mae,
    encoder_config,
    mae_config,
    patchify,
    unpatchify,
)
from mae_tracker.models.masking import num_visible, random_token_mask


def tiny_mae(variant: str = "vit-nano", *, img=(16, 16), chans=2, patch=4, **kw) -> MaskedAutoencoder:
    torch.manual_seed(0)
    cfg = mae_config(variant, img_size=img, in_chans=chans, patch_size=patch, depth=1, decoder_depth=1, **kw)
    return build_mae(cfg)


# --- every registered variant ---------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_builds_and_runs(variant):
    """Native patch size, non-square image (2p x 3p -> 6 tokens), depth cut to 1 for speed."""
    p = VARIANTS[variant]["patch_size"]
    cfg = mae_config(variant, img_size=(2 * p, 3 * p), in_chans=3, depth=1, decoder_depth=1)
    assert cfg.encoder.kind == VARIANTS[variant]["kind"]
    model = build_mae(cfg)
    x = torch.rand(2, 3, 2 * p, 3 * p)
    latent, mask, ids_restore = model.encoder(x, mask_ratio=0.5)
    d = cfg.encoder.embed_dim
    assert latent.shape == (2, 1 + 3, d)
    assert mask.shape == ids_restore.shape == (2, 6)
    loss, pred, mask = model(x, mask_ratio=0.5)
    assert pred.shape == (2, 6, p * p * 3)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.encoder.features(x).shape == (2, d)


# --- masking -----------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["vit-nano", "hybrid-nano"])
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.6, 0.75, 0.9])
def test_masking_keeps_exact_fraction_per_sample(variant, ratio):
    model = tiny_mae(variant, img=(16, 20), patch=2)  # 8 x 10 = 80 tokens
    L = 80
    keep = round(L * (1 - ratio))
    latent, mask, ids_restore = model.encoder(torch.rand(4, 2, 16, 20), mask_ratio=ratio)
    assert latent.shape[1] == 1 + keep
    assert torch.equal(mask.sum(dim=1), torch.full((4,), float(L - keep)))
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    # ids_restore must be a permutation whose first `keep` slots are exactly the visible tokens;
    # the decoder relies on this to put tokens back in place.
    assert torch.equal(ids_restore.sort(dim=1).values, torch.arange(L).expand(4, L))
    assert torch.equal(mask, (ids_restore >= keep).float())
    if 0 < ratio:
        assert not torch.equal(mask[0], mask[1])  # independent per sample


def test_num_visible_rounds_and_rejects_bad_ratios():
    assert num_visible(25, 0.6) == 10  # truncation would give 9
    assert num_visible(64, 0.75) == 16
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="mask_ratio"):
            num_visible(64, bad)
    with pytest.raises(ValueError, match="no visible"):
        num_visible(4, 0.9)


@pytest.mark.parametrize("variant", ["vit-nano", "hybrid-nano"])
def test_noise_makes_masking_deterministic(variant):
    model = tiny_mae(variant).eval()
    x = torch.rand(3, 2, 16, 16)
    noise = torch.rand(3, 16)
    loss1, pred1, mask1 = model(x, 0.75, noise=noise)
    loss2, pred2, mask2 = model(x, 0.75, noise=noise.clone())
    assert torch.equal(mask1, mask2) and torch.equal(pred1, pred2) and loss1 == loss2
    # the 4 tokens with the smallest noise are the visible ones
    lowest = noise.argsort(dim=1)[:, :4]
    expected = torch.ones(3, 16).scatter_(1, lowest, 0.0)
    assert torch.equal(mask1, expected)
    _, _, mask3 = model(x, 0.75, noise=torch.rand(3, 16))
    assert not torch.equal(mask1, mask3)
    with pytest.raises(ValueError, match="noise"):
        random_token_mask(3, 16, 0.75, noise=torch.rand(3, 15))


# --- loss only on masked patches ----------------------------------------------------------------

@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_only_sees_masked_patches(norm_pix):
    model = tiny_mae(norm_pix_loss=norm_pix)
    x = torch.rand(2, 2, 16, 16)
    loss, pred, mask = model(x, 0.75, noise=torch.rand(2, 16))
    visible = mask == 0
    # Moving predictions of visible patches changes nothing; of masked patches, the loss.
    pred_vis = pred.detach().clone()
    pred_vis[visible] += 10.0
    pred_msk = pred.detach().clone()
    pred_msk[~visible] += 10.0
    assert torch.allclose(model.forward_loss(x, pred_vis, mask), loss)
    assert model.forward_loss(x, pred_msk, mask) > loss + 1.0
    # The value is the plain mean over masked patches of the per-patch MSE.
    target = model.target(x)
    manual = ((pred - target) ** 2).mean(-1)[~visible].mean()
    assert torch.allclose(loss, manual)
    # And the gradient reaching the prediction of a visible patch is exactly zero.
    pred.retain_grad()
    loss.backward()
    assert torch.all(pred.grad[visible] == 0)
    assert torch.all(pred.grad[~visible].abs().sum(-1) > 0)


def test_norm_pix_target_is_normalised_per_patch():
    model = tiny_mae(norm_pix_loss=True)
    target = model.target(torch.rand(2, 2, 16, 16) * 7 + 3)
    assert torch.allclose(target.mean(-1), torch.zeros(2, 16), atol=1e-5)
    assert torch.allclose(target.var(-1), torch.ones(2, 16), atol=1e-3)


def test_mask_ratio_zero_is_a_plain_autoencoder():
    model = tiny_mae()
    x = torch.rand(2, 2, 16, 16)
    loss, pred, mask = model(x, mask_ratio=0.0)
    assert mask.sum() == 0 and pred.shape == (2, 16, 32)
    assert torch.allclose(loss, ((pred - model.target(x)) ** 2).mean())


# --- nothing leaks from masked pixels into visible tokens -------------------------------------

LEAK_CASES = [
    ("vit-nano", (16, 16), 4, {}),
    ("vit-nano", (16, 16), 4, {"all_tokens": True}),
    ("hybrid-nano", (32, 32), 4, {}),  # strides (2, 2)
    ("hybrid-nano", (20, 25), 5, {}),  # strides (5, 1): a stage at token resolution
    ("hybrid-tiny", (32, 48), 16, {"conv_depths": (1, 1)}),  # strides (4, 4), 5x5 dw-conv
]


@pytest.mark.parametrize("variant,img,patch,extra", LEAK_CASES)
def test_masked_pixels_cannot_influence_visible_outputs(variant, img, patch, extra):
    torch.manual_seed(0)
    cfg = encoder_config(variant, img_size=img, in_chans=3, patch_size=patch, depth=1, **extra)
    encoder = build_encoder(cfg).eval()
    with torch.no_grad():  # look like a trained model: zero-initialised biases could hide a leak
        for param in encoder.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    x = torch.rand(2, 3, *img)
    L = cfg.num_patches
    noise = torch.rand(2, L)
    latent, mask, _ = encoder(x, 0.5, noise=noise)
    pixel_mask = mask.reshape(2, 1, *cfg.grid_size).repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    assert 0 < pixel_mask.mean() < 1

    x_masked_changed = torch.where(pixel_mask.bool(), torch.randn_like(x) * 100, x)
    stage_maps = []
    for stage in getattr(encoder, "stages", []):  # hybrid: conv feature maps, masked = exactly 0
        stage.register_forward_hook(lambda mod, inp, out: stage_maps.append(out))
    latent2, mask2, _ = encoder(x_masked_changed, 0.5, noise=noise)
    for fmap in stage_maps:
        scale = fmap.shape[-1] // cfg.grid_size[1]
        masked_here = mask2.reshape(2, 1, *cfg.grid_size).repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        assert torch.all(fmap * masked_here == 0)
        assert torch.any(fmap * (1 - masked_here) != 0)
    assert torch.equal(mask, mask2)
    assert torch.allclose(latent, latent2, atol=1e-5), "masked pixels leaked into the encoder output"

    # Sanity: the test can fail. Changing one visible pixel changes the output.
    vis_pixel = (pixel_mask[0, 0] == 0).nonzero()[0]
    x_visible_changed = x.clone()
    x_visible_changed[0, :, vis_pixel[0], vis_pixel[1]] += 5.0
    latent3, _, _ = encoder(x_visible_changed, 0.5, noise=noise)
    assert not torch.allclose(latent[0], latent3[0], atol=1e-4)
    assert torch.allclose(latent[1], latent3[1], atol=1e-5)  # per-sample: no batch mixing


# --- patchify / unpatchify / reconstruct ----------------------------------------------------------

@pytest.mark.parametrize("chans", [2, 3, 5])
@pytest.mark.parametrize("img,patch", [((8, 12), 4), ((6, 10), 2), ((15, 15), 5)])
def test_patchify_roundtrip_and_layout(chans, img, patch):
    x = torch.randn(2, chans, *img)
    patches = patchify(x, patch)
    gh, gw = img[0] // patch, img[1] // patch
    assert patches.shape == (2, gh * gw, patch * patch * chans)
    assert torch.equal(unpatchify(patches, patch, (gh, gw), chans), x)
    # token k is the block at row k // gw, column k % gw, flattened as (p, p, C)
    k = gh * gw - 1
    r, c = divmod(k, gw)
    block = x[1, :, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].permute(1, 2, 0)
    assert torch.equal(patches[1, k], block.reshape(-1))


def test_reconstruct_keeps_visible_input_and_fills_masked_with_prediction():
    model = tiny_mae()
    x = torch.rand(2, 2, 16, 16)
    noise = torch.rand(2, 16)
    model.train()
    composite, pixel_mask = model.reconstruct(x, 0.75, noise=noise)
    assert model.training  # mode restored
    assert composite.shape == x.shape and pixel_mask.shape == (2, 1, 16, 16)
    assert pixel_mask.mean() == 0.75
    vis = pixel_mask.expand_as(x) == 0
    assert torch.equal(composite[vis], x[vis])
    _, pred, _ = model(x, 0.75, noise=noise)
    assert torch.allclose(composite[~vis], model.unpatchify(pred)[~vis])


def test_bad_sizes_raise_value_error():
    with pytest.raises(ValueError, match="not divisible by patch size 4"):
        encoder_config("vit-nano", img_size=30, in_chans=3)
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.rand(1, 3, 30, 30), 4)
    model = tiny_mae()
    with pytest.raises(ValueError, match="expects images"):
        model(torch.rand(1, 3, 16, 16))  # wrong channel count
    with pytest.raises(ValueError, match="unknown model variant 'vit-huge'.*vit-nano"):
        encoder_config("vit-huge", img_size=32, in_chans=3)
    with pytest.raises(ValueError, match="unknown encoder override"):
        encoder_config("vit-nano", img_size=32, in_chans=3, width=3)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        encoder_config("vit-nano", img_size=32, in_chans=3, embed_dim=96, num_heads=5)
    with pytest.raises(ValueError, match="multiply to the patch size"):
        encoder_config("hybrid-nano", img_size=32, in_chans=3, conv_strides=(2, 4))


# --- configs are JSON and rebuild loadable models -------------------------------------------------

@pytest.mark.parametrize("variant", ["vit-nano", "hybrid-nano"])
def test_config_roundtrip_rebuilds_loadable_model(variant):
    cfg = encoder_config(variant, img_size=(16, 24), in_chans=2, depth=2, embed_dim=32, num_heads=2)
    restored = EncoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert restored == cfg
    original = build_encoder(cfg).eval()
    rebuilt = build_encoder(restored).eval()
    rebuilt.load_state_dict(original.state_dict())  # strict
    x = torch.rand(2, 2, 16, 24)
    assert torch.equal(original.features(x), rebuilt.features(x))

    mcfg = mae_config(variant, img_size=16, in_chans=2, depth=1, norm_pix_loss=True)
    mrestored = MAEConfig.from_dict(json.loads(json.dumps(mcfg.to_dict())))
    assert mrestored == mcfg
    build_mae(mrestored).load_state_dict(build_mae(mcfg).state_dict())
    with pytest.raises(ValueError, match="unknown EncoderConfig keys"):
        EncoderConfig.from_dict({**cfg.to_dict(), "colour": 1})


def test_all_tokens_baseline_is_the_same_network():
    """Visible-only vs all-tokens differ only in where masking happens: at mask_ratio 0 they
    compute the same function from the same weights."""
    mae = tiny_mae()
    baseline = MaskedAutoencoder(mae.config.encoder, 64, 1, 4, encoder_on_all_tokens=True)
    missing, unexpected = baseline.load_state_dict(mae.state_dict(), strict=False)
    assert missing == ["encoder.mask_token"] and unexpected == ["mask_token"]
    x = torch.rand(2, 2, 16, 16)
    assert torch.allclose(mae(x, 0.0)[0], baseline(x, 0.0)[0], atol=1e-6)
    latent, mask, _ = baseline.encoder(x, 0.75)
    assert latent.shape == (2, 17, 64) and mask.sum() == 24


def test_only_visible_patches_are_embedded_with_the_same_tokens_and_gradients():
    """The ViT embeds just the visible patches (a linear map of each patch's pixels): the tokens
    and the patch embedding's gradients equal those of the conv over every patch, then gathered."""
    from mae_tracker.models.masking import gather_tokens

    encoder = tiny_mae(chans=3).encoder
    x = torch.rand(4, 3, 16, 16)
    tm = random_token_mask(4, encoder.num_patches, 0.75, noise=torch.rand(4, encoder.num_patches))
    ours = encoder.embed_visible(x, tm)
    ours.pow(2).sum().backward()
    grads = [p.grad.clone() for p in encoder.patch_embed.parameters()]
    encoder.zero_grad()
    reference = gather_tokens(encoder.patch_embed(x) + encoder.pos_embed[:, 1:], tm.ids_keep)
    reference.pow(2).sum().backward()
    assert ours.shape == (4, 4, 64)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    for grad, param in zip(grads, encoder.patch_embed.parameters()):
        torch.testing.assert_close(grad, param.grad, rtol=1e-4, atol=1e-5)


def test_short_pretraining_reduces_loss():
    model = tiny_mae("hybrid-nano")
    x = torch.rand(8, 2, 16, 16)
    noise = torch.rand(8, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(x, 0.5, noise=noise)[0].item()
    for _ in range(15):
        loss = model(x, 0.5)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model(x, 0.5, noise=noise)[0].item() < 0.5 * first


# --- classifier ------------------------------------------------------------------------------------

def _step(clf: JetClassifier, x: torch.Tensor, y: torch.Tensor) -> None:
    opt = torch.optim.AdamW(clf.parameters(), lr=1e-2)  # frozen params get no grad -> untouched
    loss = torch.nn.functional.binary_cross_entropy_with_logits(clf(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_linear_probe_freezes_encoder():
    torch.manual_seed(0)
    cfg = encoder_config("vit-nano", img_size=16, in_chans=2, depth=1, drop_path_rate=0.5)
    clf = JetClassifier(build_encoder(cfg), linear_probe=True)
    assert isinstance(clf.head[0], torch.nn.BatchNorm1d) and clf.head[0].weight is None
    before = {k: v.clone() for k, v in clf.encoder.state_dict().items()}
    head_before = clf.head[-1].weight.clone()
    clf.train()
    assert not any(m.training for m in clf.encoder.modules())
    assert clf.head.training
    x, y = torch.rand(8, 2, 16, 16), torch.randint(0, 2, (8,)).float()
    # drop-path 0.5 would make two train-mode passes differ if the encoder were not in eval
    assert torch.equal(clf(x), clf(x))
    _step(clf, x, y)
    for k, v in clf.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(clf.head[-1].weight, head_before)
    assert all(p.requires_grad for p in clf.trainable_parameters())
    assert len(clf.trainable_parameters()) == 2  # Linear weight + bias


@pytest.mark.parametrize("variant", ["vit-nano", "hybrid-nano"])
def test_finetune_updates_encoder(variant):
    torch.manual_seed(0)
    cfg = encoder_config(variant, img_size=16, in_chans=2, depth=1)
    clf = JetClassifier(build_encoder(cfg), dropout=0.1).train()
    assert isinstance(clf.head[0], torch.nn.LayerNorm)
    x, y = torch.rand(8, 2, 16, 16), torch.randint(0, 2, (8,)).float()
    assert clf(x).shape == (8,)
    before = {k: v.clone() for k, v in clf.encoder.named_parameters()}
    _step(clf, x, y)
    changed = [k for k, v in clf.encoder.named_parameters() if not torch.equal(v, before[k])]
    assert "blocks.0.attn.qkv.weight" in changed and "cls_token" in changed
    with pytest.raises(ValueError, match="pool"):
        JetClassifier(build_encoder(cfg), pool="max")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("variant", ["vit-nano", "hybrid-nano"])
def test_runs_on_cuda(variant):
    model = tiny_mae(variant).cuda()
    x = torch.rand(2, 2, 16, 16, device="cuda")
    loss, pred, mask = model(x)
    loss.backward()
    assert pred.is_cuda and mask.is_cuda
    composite, pixel_mask = model.reconstruct(x)
    assert composite.is_cuda
    clf = JetClassifier(model.encoder, linear_probe=True).cuda()
    assert clf(x).shape == (2,)
