"""Benchmark (not a test): MAE pretraining img/s: ours vs the usual way; visible vs all tokens; GPU MFU.

1. Ours vs the usual way (``--baseline``, default on): the MAE paper's recipe as most code has
   it (visible-token encoder from timm Blocks, argsort masking, plain ``torch.optim.AdamW``,
   fp32, ``loss.item()`` every step) against our training step (mae_tracker's model, whose
   encoder embeds only the visible patches, whose blocks use explicit attention on short CPU
   sequences and whose decoder computes its first block's norm1 + qkv of the masked tokens
   once per patch position and runs its last block for the masked tokens only;
   loop.make_optimizer / loop.mask_noise; loss accumulated without a read-back), same
   dimensions, same batch, alternating rounds; then a torch.profiler table of where each
   step's time goes.
2. Visible-only vs all-tokens encoder (below).
3. On CUDA: achieved TFLOP/s and model FLOP utilisation (MFU) of bf16 MAE training at
   125x125x3 patch 5 for vit-small and vit-base (``--mfu``), with the GPU's name.

Same weights both ways: the "all tokens" model is the same network with masking moved
inside the encoder (masked patch embeddings replaced by a learned mask token, SimMIM-like),
so the encoder processes all L tokens instead of L * (1 - mask_ratio). One training step =
forward + backward + AdamW step. The two modes are timed in alternating rounds so that load
from other processes on the machine hits both alike; the median round is reported.

    python bench/bench_mae.py                       # CPU default: 32x32x3, patch 4, 2 threads
    python bench/bench_mae.py --img 125 --patch 5 --variants vit-nano
    python bench/bench_mae.py --mfu                 # on a GPU: TFLOP/s and MFU, bf16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from mae_tracker.models import MaskedAutoencoder, build_mae, mae_config
from mae_tracker.models.pos_embed import sincos_pos_embed_2d
from mae_tracker.train import loop


class UsualMAE(nn.Module):
    """MAE as the reference code writes it (facebookresearch/mae models_mae.py), trimmed."""

    def __init__(self, img: int, patch: int, chans: int, dim: int, depth: int, heads: int,
                 dec_dim: int, dec_depth: int, dec_heads: int) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img, patch, chans, dim)
        self.patch, self.chans = patch, chans
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(dim, self.patch_embed.grid_size), requires_grad=False)
        self.blocks = nn.ModuleList(Block(dim, heads, 4.0, qkv_bias=True, norm_layer=nn.LayerNorm)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.decoder_embed = nn.Linear(dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed_2d(dec_dim, self.patch_embed.grid_size),
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList(Block(dec_dim, dec_heads, 4.0, qkv_bias=True, norm_layer=nn.LayerNorm)
                                            for _ in range(dec_depth))
        self.decoder_norm = nn.LayerNorm(dec_dim)
        self.decoder_pred = nn.Linear(dec_dim, patch * patch * chans)

    def patchify(self, imgs):
        p, c = self.patch, self.chans
        h = w = imgs.shape[2] // p
        x = imgs.reshape(imgs.shape[0], c, h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(imgs.shape[0], h * w, p * p * c)

    def random_masking(self, x, mask_ratio):
        n, l, d = x.shape
        len_keep = int(l * (1 - mask_ratio))
        noise = torch.rand(n, l, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, d))
        mask = torch.ones([n, l], device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)
        return x_masked, mask, ids_restore

    def forward(self, imgs, mask_ratio=0.75):
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:, :]
        loss = ((pred - self.patchify(imgs)) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()


class UsualStep:
    """Plain AdamW (for-loop on CPU), loss.item() every step (as a logging loop would)."""

    def __init__(self, model: nn.Module, mask_ratio: float) -> None:
        self.model, self.mask_ratio = model, mask_ratio
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
        self.losses: list[float] = []

    def __call__(self, x: torch.Tensor) -> None:
        loss = self.model(x, self.mask_ratio)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.losses.append(loss.item())


class OurStep:
    """What loop.train_one_epoch does per step: fused AdamW (decay groups), noise from
    loop.mask_noise, loss kept on the device (read back only at logging points)."""

    def __init__(self, model: MaskedAutoencoder, mask_ratio: float) -> None:
        self.model, self.mask_ratio = model, mask_ratio
        self.opt = loop.make_optimizer(model, 1e-4, 0.05)
        self.running = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)

    def __call__(self, x: torch.Tensor) -> None:
        noise = loop.mask_noise(len(x), self.model.num_patches, x.device)
        loss = self.model(x, self.mask_ratio, noise=noise)[0]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.running += loss.detach()


def timed_rate(step, x: torch.Tensor, steps: int) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return steps * x.shape[0] / (time.perf_counter() - start)


def profile_table(step, x: torch.Tensor, steps: int, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(x)
    key = "self_cuda_time_total" if x.is_cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def bench_baseline(args: argparse.Namespace, device: torch.device) -> float:
    """Ours vs the usual way at ``args.baseline_variant``; returns the speed-up."""
    torch.manual_seed(0)
    cfg = mae_config(args.baseline_variant, img_size=args.img, in_chans=args.chans, patch_size=args.patch)
    enc = cfg.encoder
    ours = OurStep(build_mae(cfg).to(device), args.mask_ratio)
    usual = UsualStep(UsualMAE(args.img, enc.patch_size, args.chans, enc.embed_dim, enc.depth, enc.num_heads,
                               cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads).to(device), args.mask_ratio)
    n_ours = sum(p.numel() for p in ours.model.parameters())
    n_usual = sum(p.numel() for p in usual.model.parameters() if p.requires_grad)
    x = torch.rand(args.batch, args.chans, args.img, args.img, device=device)
    steps = {"usual": usual, "ours": ours}
    for step in steps.values():
        for _ in range(args.warmup):
            step(x)
    rates: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.baseline_rounds):
        for key, step in steps.items():
            rates[key].append(timed_rate(step, x, args.baseline_steps))
    med = {k: statistics.median(v) for k, v in rates.items()}
    speedup = med["ours"] / med["usual"]
    print(f"\n== ours vs the usual way: {args.baseline_variant} {args.img}x{args.img}x{args.chans} patch "
          f"{enc.patch_size} ({enc.num_patches} tokens), batch {args.batch}, mask {args.mask_ratio}, "
          f"{args.baseline_rounds} alternating rounds of {args.baseline_steps} step(s), median")
    print(f"   params: ours {n_ours:,}, usual {n_usual:,}")
    for key in steps:
        q = statistics.quantiles(rates[key], n=4) if len(rates[key]) > 1 else [med[key]] * 3
        print(f"   {key:6s} {med[key]:8.1f} img/s (median; quartiles {q[0]:.0f}-{q[2]:.0f})")
    paired = statistics.median(o / u for o, u in zip(rates["ours"], rates["usual"]))
    print(f"   speed-up ours / usual: {speedup:.2f}x of the medians, {paired:.2f}x median of paired rounds "
          f"(target >= 1.20x)", flush=True)
    if args.profile:
        for key, step in steps.items():
            print(f"\n-- where the time goes ({key}, {args.profile} steps, top ops by self time):")
            print(profile_table(step, x, args.profile, args.profile_rows))
    return speedup


# Peak dense bf16 TFLOP/s (no sparsity) by GPU name, for MFU.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0}


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def mae_train_flops(cfg, batch: int, mask_ratio: float) -> float:
    """Model FLOPs of one training step (forward + backward = 3x forward), matmuls only:
    encoder on the visible tokens + cls, decoder on all tokens + cls, attention included."""
    from mae_tracker.models.masking import num_visible

    enc = cfg.encoder
    n_vis = num_visible(enc.num_patches, mask_ratio) + 1
    n_all = enc.num_patches + 1

    def blocks(tokens: int, dim: int, depth: int, mlp: float) -> float:
        per_token = 2 * (4 * dim * dim + 2 * mlp * dim * dim)  # qkv + proj + mlp
        attention = 2 * 2 * tokens * tokens * dim  # q @ k and attn @ v
        return depth * (tokens * per_token + attention)

    patch_in = enc.patch_size ** 2 * enc.in_chans
    forward = (2 * enc.num_patches * patch_in * enc.embed_dim  # patch embedding (all patches)
               + blocks(n_vis, enc.embed_dim, enc.depth, enc.mlp_ratio)
               + 2 * n_vis * enc.embed_dim * cfg.decoder_dim
               + blocks(n_all, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_mlp_ratio)
               + 2 * n_all * cfg.decoder_dim * patch_in)
    return 3 * forward * batch


def bench_mfu(args: argparse.Namespace, device: torch.device) -> None:
    """TFLOP/s and MFU of bf16 MAE training (our step, autocast) on CUDA."""
    if device.type != "cuda":
        print("\n== MFU: needs a CUDA GPU; none here, so no TFLOP/s or MFU figure (nothing is estimated).")
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(device)
    peak = peak_tflops(name)
    print(f"\n== bf16 MAE training on {name} (peak dense bf16 {peak or '?'} TFLOP/s), "
          f"{args.mfu_img}x{args.mfu_img}x3 patch {args.mfu_patch}, mask {args.mask_ratio}, compile={args.compile}")
    for variant in args.mfu_variants:
        torch.manual_seed(0)
        cfg = mae_config(variant, img_size=args.mfu_img, in_chans=3, patch_size=args.mfu_patch)
        model = build_mae(cfg).to(device)
        step = OurStep(model, args.mask_ratio)
        if args.compile:
            step.model = torch.compile(model)
            step.model.num_patches = model.num_patches
        x = torch.rand(args.mfu_batch, 3, args.mfu_img, args.mfu_img, device=device)

        def bf16_step(batch: torch.Tensor) -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                step(batch)

        for _ in range(args.warmup + (10 if args.compile else 0)):
            bf16_step(x)
        rate = statistics.median(timed_rate(bf16_step, x, args.steps * 4) for _ in range(args.rounds))
        flops = mae_train_flops(cfg, args.mfu_batch, args.mask_ratio) / args.mfu_batch * rate
        mfu = f"{100 * flops / 1e12 / peak:.1f} %" if peak else "n/a (unknown peak)"
        print(f"   {variant:10s} batch {args.mfu_batch}: {rate:9.1f} img/s, {flops / 1e12:7.1f} TFLOP/s, MFU {mfu}, "
              f"max memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB", flush=True)
        del model, step
        torch.cuda.empty_cache()


def train_step(model: MaskedAutoencoder, opt: torch.optim.Optimizer, x: torch.Tensor, mask_ratio: float) -> None:
    loss = model(x, mask_ratio)[0]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def images_per_second(model: MaskedAutoencoder, opt: torch.optim.Optimizer, x: torch.Tensor,
                      mask_ratio: float, steps: int) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, opt, x, mask_ratio)
    if x.is_cuda:
        torch.cuda.synchronize()
    return steps * x.shape[0] / (time.perf_counter() - start)


def bench_variant(variant: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    cfg = mae_config(variant, img_size=args.img, in_chans=args.chans, patch_size=args.patch)
    visible = build_mae(cfg).to(device)
    all_tokens = MaskedAutoencoder(cfg.encoder, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads,
                                   cfg.norm_pix_loss, encoder_on_all_tokens=True).to(device)
    all_tokens.load_state_dict(visible.state_dict(), strict=False)  # same weights; mask tokens differ
    x = torch.rand(args.batch, args.chans, args.img, args.img, device=device)
    models = {"visible": visible, "all": all_tokens}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    for key, model in models.items():
        for _ in range(args.warmup):
            train_step(model, opts[key], x, args.mask_ratio)
    rates: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.rounds):
        for key, model in models.items():
            rates[key].append(images_per_second(model, opts[key], x, args.mask_ratio, args.steps))
    result = {k: statistics.median(v) for k, v in rates.items()}
    tokens = cfg.encoder.num_patches
    print(f"{variant:12s} {args.img}x{args.img}x{args.chans} patch {args.patch} ({tokens} tokens), "
          f"dim {cfg.encoder.embed_dim} depth {cfg.encoder.depth}, batch {args.batch}, mask {args.mask_ratio}: "
          f"visible-only {result['visible']:7.1f} img/s | all tokens {result['all']:7.1f} img/s | "
          f"speed-up {result['visible'] / result['all']:.2f}x", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["vit-nano", "hybrid-nano"])
    parser.add_argument("--img", type=int, default=32)
    parser.add_argument("--chans", type=int, default=3)
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per mode")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per mode")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="compare our step with the usual way (default on)")
    parser.add_argument("--baseline-variant", default="vit-micro")
    parser.add_argument("--baseline-rounds", type=int, default=30,
                        help="alternating rounds (of --baseline-steps steps) per side")
    parser.add_argument("--baseline-steps", type=int, default=1,
                        help="steps per round: 1 = alternate every step, most robust on a shared machine")
    parser.add_argument("--profile", type=int, default=5, help="profiled steps per side (0 = no profile)")
    parser.add_argument("--profile-rows", type=int, default=15)
    parser.add_argument("--mfu", action=argparse.BooleanOptionalAction, default=None,
                        help="GPU TFLOP/s + MFU section (default: on when CUDA is present)")
    parser.add_argument("--mfu-variants", nargs="+", default=["vit-small", "vit-base"])
    parser.add_argument("--mfu-img", type=int, default=125)
    parser.add_argument("--mfu-patch", type=int, default=5)
    parser.add_argument("--mfu-batch", type=int, default=64)
    parser.add_argument("--compile", action="store_true", help="torch.compile in the MFU section")
    parser.add_argument("--skip-visible-vs-all", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    import os
    import platform

    print(f"torch {torch.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    if args.baseline:
        bench_baseline(args, device)
    if not args.skip_visible_vs_all:
        print()
        for variant in args.variants:
            bench_variant(variant, args, device)
    if args.mfu or (args.mfu is None and device.type == "cuda"):
        bench_mfu(args, device)


if __name__ == "__main__":
    main()
