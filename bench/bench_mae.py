"""Benchmark (not a test): MAE pretraining img/s, encoder on visible tokens vs on all tokens.

Same weights both ways: the "all tokens" model is the same network with masking moved
inside the encoder (masked patch embeddings replaced by a learned mask token, SimMIM-like),
so the encoder processes all L tokens instead of L * (1 - mask_ratio). One training step =
forward + backward + AdamW step. The two modes are timed in alternating rounds so that load
from other processes on the machine hits both alike; the median round is reported.

    python bench/bench_mae.py                       # CPU default: 32x32x3, patch 4, 2 threads
    python bench/bench_mae.py --img 125 --patch 5 --variants vit-nano
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mae_tracker.models import MaskedAutoencoder, build_mae, mae_config


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    for variant in args.variants:
        bench_variant(variant, args, device)


if __name__ == "__main__":
    main()
