"""The transformer block: the same network as timm's Block, whichever attention path runs;
the MAE decoder that predicts only the masked patches gives the full decoder's predictions."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import Block

from mae_tracker.models import build_mae, mae_config
from mae_tracker.models.blocks import EXPLICIT_ATTENTION_MAX_TOKENS, TransformerBlock
from mae_tracker.models.masking import gather_tokens


def twin_blocks(dim: int = 48, heads: int = 4) -> tuple[TransformerBlock, Block]:
    torch.manual_seed(0)
    ours = TransformerBlock(dim, heads, 4.0, qkv_bias=True)
    for p in ours.parameters():  # non-trivial LayerNorm and bias values too
        torch.nn.init.normal_(p, std=0.2)
    timm_block = Block(dim, heads, 4.0, qkv_bias=True, norm_layer=torch.nn.LayerNorm)
    timm_block.load_state_dict(ours.state_dict())  # strict: the same names and shapes
    return ours, timm_block


@pytest.mark.parametrize("tokens", [5, 17, EXPLICIT_ATTENTION_MAX_TOKENS + 3])  # explicit, explicit, fused
def test_block_equals_timm_block_values_and_gradients(tokens):
    ours, reference = twin_blocks()
    x = torch.randn(3, tokens, 48)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out1, out2 = ours(x1), reference(x2)
    assert torch.allclose(out1, out2, atol=1e-5)
    g = torch.randn_like(out1)
    out1.backward(g)
    out2.backward(g)
    assert torch.allclose(x1.grad, x2.grad, atol=1e-4)
    for (name, p1), p2 in zip(ours.named_parameters(), reference.parameters()):
        assert torch.allclose(p1.grad, p2.grad, atol=1e-4), name


def test_keep_returns_the_first_tokens_of_the_full_output():
    ours, _ = twin_blocks()
    x = torch.randn(2, 11, 48)
    full = ours(x)
    kept = ours(x, keep=4)
    assert kept.shape == (2, 4, 48)
    assert torch.allclose(kept, full[:, :4], atol=1e-5)
    # Attention is permutation-equivariant: whichever tokens come first are the ones kept.
    assert torch.allclose(ours(x.flip(1), keep=4), full.flip(1)[:, :4], atol=1e-5)


@pytest.mark.parametrize("keep", [None, 3, 6])  # all queries; within the shared rows; past them
def test_shared_rows_give_the_block_on_the_gathered_tokens(keep):
    """x[:, :m] = table[ids]: norm1 + qkv once per table row gives the same output and the
    same gradients (table, rest, parameters) as running the block on the tokens."""
    ours, _ = twin_blocks()
    table = torch.randn(7, 48, requires_grad=True)
    ids = torch.tensor([[0, 3, 3, 6], [5, 1, 2, 0]])
    rest = torch.randn(2, 5, 48, requires_grad=True)
    x = torch.cat([table[ids], rest], dim=1)
    reference = ours(x, keep=keep)
    shared = ours(x, keep=keep, shared_rows=(table, ids))
    assert shared.shape == reference.shape == (2, keep or 9, 48)
    assert torch.allclose(shared, reference, atol=1e-5)
    g = torch.randn_like(reference)
    params = [table, rest, *ours.parameters()]
    expected = torch.autograd.grad(reference, params, g, retain_graph=True)
    for a, b in zip(expected, torch.autograd.grad(shared, params, g)):
        assert torch.allclose(a, b, atol=1e-4)


def test_heads_must_divide_the_width():
    with pytest.raises(ValueError, match="divisible"):
        TransformerBlock(50, 4)


def full_decoder_predictions(model, latent, ids_restore):
    """The decoder as the MAE paper writes it: mask tokens, unshuffle, all tokens through
    every block, a prediction for every patch."""
    x = model.decoder_embed(latent)
    b, n, d = x.shape
    fill = model.mask_token.expand(b, model.num_patches + 1 - n, d)
    patches = gather_tokens(torch.cat([x[:, 1:], fill], dim=1), ids_restore)
    x = torch.cat([x[:, :1], patches], dim=1) + model.decoder_pos_embed
    for block in model.decoder_blocks:
        x = block(x)
    return model.decoder_pred(model.decoder_norm(x))[:, 1:]


@pytest.mark.parametrize("variant,ratio,decoder_depth",
                         [("vit-nano", 0.75, 3), ("vit-nano", 0.4, 2), ("hybrid-nano", 0.6, 3), ("vit-nano", 0.75, 1)])
def test_decoder_predicts_masked_patches_exactly_as_the_full_decoder(variant, ratio, decoder_depth):
    torch.manual_seed(0)
    cfg = mae_config(variant, img_size=(16, 16), in_chans=2, patch_size=4, depth=2, decoder_depth=decoder_depth)
    model = build_mae(cfg)
    x = torch.rand(4, 2, 16, 16)
    latent, mask, ids_restore = model.encoder(x, ratio, torch.rand(4, 16))
    pred = model.decode(latent, ids_restore)
    reference = full_decoder_predictions(model, latent, ids_restore)
    masked = mask.bool()
    assert masked.sum() > 0 and (~masked).sum() > 0
    assert torch.allclose(pred[masked], reference[masked], atol=1e-5)
    assert torch.all(pred[~masked] == 0)  # visible patches are not predicted
    # The loss and its gradients are those of the full decoder.
    loss = model.forward_loss(x, pred, mask)
    ref_loss = model.forward_loss(x, reference, mask)
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    params = [model.mask_token, *model.decoder_embed.parameters(), *model.decoder_blocks.parameters()]
    grads = torch.autograd.grad(loss, params, retain_graph=True)
    ref_grads = torch.autograd.grad(ref_loss, params)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5)


def test_models_pickled_with_timm_blocks_still_reconstruct():
    """MAEs logged before blocks.py hold timm Blocks (same weights, no ``keep``): they still
    decode, to the same predictions."""
    torch.manual_seed(0)
    model = build_mae(mae_config("vit-nano", img_size=(16, 16), in_chans=2, patch_size=4, depth=1,
                                 decoder_depth=2))
    x, noise = torch.rand(3, 2, 16, 16), torch.rand(3, 16)
    expected = model.reconstruct(x, 0.75, noise=noise)[0]
    for i, block in enumerate(model.decoder_blocks):
        old = Block(64, 4, 4.0, qkv_bias=True, norm_layer=torch.nn.LayerNorm)
        old.load_state_dict(block.state_dict())
        model.decoder_blocks[i] = old
    assert torch.allclose(model.reconstruct(x, 0.75, noise=noise)[0], expected, atol=1e-5)
