"""Benchmark (not a test): DDP scaling on this CPU, 2 ranks x 1 thread vs 1 rank x 2 threads.

Both sides run the real training step (loop.for_training = DDP with gloo under torchrun,
fused AdamW, loop.mask_noise) on synthetic 32x32x3 images with the same global batch, in
alternating rounds; each round is a fresh launch, the median round's global images/s is reported.

    python bench/bench_ddp.py                     # vit-nano, global batch 128, 3 rounds
    python bench/bench_ddp.py --variant vit-micro --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time


def worker(args: argparse.Namespace) -> None:
    import torch

    from mae_tracker.models import build_mae, mae_config
    from mae_tracker.train import distributed, loop

    ctx = distributed.init("cpu")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = mae_config(args.variant, img_size=32, in_chans=3, patch_size=4)
    model = build_mae(cfg)
    optimizer = loop.make_optimizer(model, 1e-4, 0.05)
    train_model = loop.for_training(model, argparse.Namespace(compile=False), torch.device("cpu"))
    batch = args.global_batch // ctx.world_size
    x = torch.rand(batch, 3, 32, 32)
    running = torch.zeros((), dtype=torch.float64)

    def step() -> None:
        nonlocal running
        loss = train_model(x, mask_ratio=0.75, noise=loop.mask_noise(batch, model.num_patches, x.device))[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += loss.detach()

    for _ in range(args.warmup):
        step()
    distributed.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    distributed.barrier()
    rate = args.steps * args.global_batch / (time.perf_counter() - start)
    if ctx.is_main:
        print("RESULT " + json.dumps({"img_s": rate}), flush=True)
    distributed.shutdown()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(ranks: int, threads: int, args: argparse.Namespace) -> float:
    common = [__file__, "--worker", f"--threads={threads}", f"--variant={args.variant}",
              f"--global-batch={args.global_batch}", f"--steps={args.steps}", f"--warmup={args.warmup}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if ranks == 1:
        command = [sys.executable, *common]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
                   "--master_addr=127.0.0.1", f"--master_port={free_port()}", *common]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])["img_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="vit-nano")
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    import torch

    print(f"DDP scaling: {args.variant} MAE, 32x32x3 patch 4, global batch {args.global_batch}, {args.steps} "
          f"timed steps per launch, torch {torch.__version__}, {os.cpu_count()} CPUs")
    rates: dict[str, list[float]] = {"1 rank x 2 threads": [], "2 ranks x 1 thread (gloo)": []}
    for _ in range(args.rounds):
        rates["1 rank x 2 threads"].append(launch(1, 2, args))
        rates["2 ranks x 1 thread (gloo)"].append(launch(2, 1, args))
    med = {k: statistics.median(v) for k, v in rates.items()}
    for key, values in rates.items():
        print(f"  {key:26s} {med[key]:8.1f} img/s   rounds: " + " ".join(f"{v:.0f}" for v in values))
    print(f"  2 ranks / 1 rank: {med['2 ranks x 1 thread (gloo)'] / med['1 rank x 2 threads']:.2f}x")


if __name__ == "__main__":
    main()
