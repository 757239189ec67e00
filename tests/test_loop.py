"""The shared training pieces: optimiser groups, schedule, checkpoints."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

from mae_tracker.models.classifier import JetClassifier
from mae_tracker.models.encoders import build_encoder
from mae_tracker.train.config import CommonConfig
from mae_tracker.models.variants import encoder_config
from mae_tracker.train import loop


def classifier(linear_probe: bool = False) -> JetClassifier:
    return JetClassifier(build_encoder(encoder_config("vit-nano", img_size=16, in_chans=3)),
                         linear_probe=linear_probe)


def settings_of(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, tuple[float, float]]:
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    return {name: by_param[id(p)] for name, p in model.named_parameters() if id(p) in by_param}


def test_layer_decay_scales_lr_by_depth_and_skips_decay_on_1d_params():
    model = classifier()
    settings = settings_of(loop.make_optimizer(model, lr=1.0, weight_decay=0.05, layer_decay=0.5), model)
    assert len(settings) == len(list(model.parameters()))
    depth = len(model.encoder.blocks)  # 4: the head and final norm at layer 5
    assert settings["head.2.weight"] == (1.0, 0.05)
    assert settings["head.2.bias"] == (1.0, 0.0)
    assert settings["encoder.norm.weight"] == (1.0, 0.0)
    assert settings["encoder.blocks.3.attn.qkv.weight"] == (0.5, 0.05)
    assert settings["encoder.blocks.0.attn.qkv.weight"] == (0.5 ** depth, 0.05)
    assert settings["encoder.patch_embed.proj.weight"] == (0.5 ** (depth + 1), 0.05)
    assert settings["encoder.cls_token"] == (0.5 ** (depth + 1), 0.0)


def test_without_layer_decay_every_group_has_the_base_lr_and_probe_trains_the_head_only():
    model = classifier()
    assert {lr for lr, _ in settings_of(loop.make_optimizer(model, 3e-3, 0.05), model).values()} == {3e-3}
    probe = classifier(linear_probe=True)
    assert set(settings_of(loop.make_optimizer(probe, 3e-3, 0.0), probe)) == {"head.2.weight", "head.2.bias"}


def test_warmup_then_cosine_to_zero():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = loop.warmup_cosine(optimizer, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert lrs[8] == pytest.approx(1.0 + math.cos(math.pi * 4 / 8))  # halfway down the cosine
    assert lrs == sorted(lrs[:4]) + sorted(lrs[4:], reverse=True)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)


def test_checkpoint_round_trip_restores_weights_optimiser_and_rng(tmp_path):
    model = classifier()
    optimizer = loop.make_optimizer(model, 1e-3, 0.05)
    scheduler = loop.warmup_cosine(optimizer, 2, 10)
    model(torch.rand(4, 3, 16, 16)).sum().backward()
    optimizer.step()
    scheduler.step()
    path = tmp_path / "run" / "checkpoint.pt"
    loop.save_checkpoint(path, epoch=3, model=model, optimizer=optimizer, scheduler=scheduler, extra={"k": 1})
    expected_draw = torch.rand(3)

    fresh = classifier()
    fresh_optimizer = loop.make_optimizer(fresh, 1e-3, 0.05)
    fresh_scheduler = loop.warmup_cosine(fresh_optimizer, 2, 10)
    state = loop.load_checkpoint(path, model=fresh, optimizer=fresh_optimizer, scheduler=fresh_scheduler)
    assert state["epoch"] == 3 and state["extra"] == {"k": 1}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert fresh_scheduler.last_epoch == 1
    assert torch.equal(torch.rand(3), expected_draw), "the RNG continues where the checkpoint left it"
    assert not list(path.parent.glob("*.tmp"))


def test_non_finite_loss_stops_training():
    with pytest.raises(loop.TrainingFailed, match="epoch 2, step 7"):
        loop.check_finite(torch.tensor(float("nan")), epoch=2, step=7)
    loop.check_finite(torch.tensor(0.5), epoch=0, step=0)


def _Settings(**values) -> CommonConfig:
    """The loop reads typed config fields: the arms' common config with small settings."""
    return CommonConfig(**{**dict(batch_size=32, seed=1, log_every_steps=2, loader_workers=0), **values})


def _one_epoch(jets_file, lr: float = 1e-2, **settings) -> tuple[dict, torch.Tensor]:
    from mae_tracker.data.jetfile import JetImageReader

    reader = JetImageReader(jets_file)
    torch.manual_seed(0)
    model = torch.nn.Linear(3 * 32 * 32, 1)
    optimizer = loop.make_optimizer(model, lr, 0.0)
    scheduler = loop.warmup_cosine(optimizer, 1, 10)
    config = _Settings(**settings)
    metrics = loop.train_one_epoch(reader, np.arange(200), None, config, 0,
                                   lambda x, y: (model(x.flatten(1)).squeeze(-1) - y.float()).pow(2).mean(),
                                   optimizer, scheduler)
    return metrics, model.weight.detach().clone()


def test_epoch_with_background_loader_equals_the_plain_loop(jets_file):
    plain, weights = _one_epoch(jets_file, loader_workers=0)
    prefetched, prefetched_weights = _one_epoch(jets_file, loader_workers=2)
    assert plain["train_loss"] == prefetched["train_loss"] and np.isfinite(plain["train_loss"])
    assert torch.equal(weights, prefetched_weights)
    assert plain["throughput_img_s"] > 0 and plain["epoch_time_s"] > 0
    # worker processes (own HDF5 handles, forked): the same batches in the same order
    processes, process_weights = _one_epoch(jets_file, loader_workers=2, loader_processes=True)
    assert processes["train_loss"] == plain["train_loss"]
    assert torch.equal(weights, process_weights)


def test_nan_is_caught_at_the_next_logging_point_without_a_per_step_sync(jets_file):
    with pytest.raises(loop.TrainingFailed, match="loss became nan at epoch 0, by step"):
        _one_epoch(jets_file, lr=1e30, log_every_steps=0)  # checked once, at the end of the epoch


def test_fused_adamw_on_cpu_and_cuda_path_switches_stay_off_on_cpu():
    model = classifier()
    optimizer = loop.make_optimizer(model, 1e-3, 0.05)
    assert all(group["fused"] for group in optimizer.param_groups)
    assert isinstance(loop.autocast(torch.device("cpu"), _Settings()), contextlib.nullcontext)
    assert loop.for_training(model, _Settings(), torch.device("cpu")) is model
    noise = loop.mask_noise(4, 64, torch.device("cpu"))
    assert noise.shape == (4, 64)


def test_compile_option_trains_the_same_model_with_the_same_loss_and_gradients(tmp_path, monkeypatch):
    """``--compile``: for_training hands back a torch.compile'd module over the same parameters;
    an MAE training step through it (inductor, C++ on CPU) gives the eager loss and gradients."""
    from mae_tracker.models import build_mae, mae_config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # nothing in the home
    torch.manual_seed(0)
    model = build_mae(mae_config("vit-nano", img_size=(16, 16), in_chans=2, patch_size=4, depth=1,
                                 decoder_depth=2))
    compiled = loop.for_training(model, _Settings(compile=True), torch.device("cpu"))
    assert compiled is not model and isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    assert {id(p) for p in compiled.parameters()} == {id(p) for p in model.parameters()}
    x, noise = torch.rand(8, 2, 16, 16), torch.rand(8, 16)
    results = []
    for module in (model, compiled):
        model.zero_grad(set_to_none=True)
        loss = module(x, 0.75, noise=noise)[0]
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    assert torch.isfinite(eager_loss) and torch.allclose(compiled_loss, eager_loss, rtol=1e-5)
    for eager, compiled_grad in zip(eager_grads, compiled_grads):
        assert torch.allclose(compiled_grad, eager, rtol=1e-4, atol=1e-6)


def test_background_logger_runs_jobs_in_order_off_the_thread_and_surfaces_errors():
    import threading

    from mae_tracker.train.background import BackgroundLogger, LoggingFailed

    seen = []
    with BackgroundLogger() as logger:
        for i in range(5):
            logger.submit(f"job {i}", lambda i=i: seen.append((i, threading.current_thread().name)))
    assert [i for i, _ in seen] == list(range(5))
    assert all(name != threading.current_thread().name for _, name in seen)

    logger = BackgroundLogger()
    logger.submit("grids/epoch_000.png", lambda: 1 / 0)
    with pytest.raises(LoggingFailed, match="grids/epoch_000.png failed: ZeroDivisionError"):
        logger.close()


def test_an_abandoned_background_logger_finishes_the_running_job_and_skips_the_rest():
    """A failing run's logger must not leave its thread inside a job when the process exits."""
    import threading
    import time

    from mae_tracker.train.background import BackgroundLogger

    started, done = threading.Event(), []
    logger = BackgroundLogger()
    logger.submit("slow", lambda: (started.set(), time.sleep(0.3), done.append("slow")))
    logger.submit("next", lambda: done.append("next"))
    started.wait(5)
    logger.abandon()
    assert done == ["slow"] and not logger._thread.is_alive()
