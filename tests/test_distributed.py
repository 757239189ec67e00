"""DDP under torchrun on CPU (gloo): 2 ranks x batch 16 == 1 process x batch 32; one MLflow run;
a rank that dies fails the run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import mlflow
from mae_tracker.train.saved_model import load_model
import numpy as np
import pytest
import torch

from mae_tracker.train import distributed, loop
from mae_tracker.train.config import PretrainConfig
from mae_tracker.train.pretrain import pretrain

TINY = dict(epochs=2, max_jets=128, eval_jets=32, image_every=0, probe_train_jets=0, probe_val_jets=0,
            log_every_steps=1, lr=2e-3, warmup_epochs=0.5, seed=5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(args: list[str], cwd, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def cli_args(config: dict) -> list[str]:
    return [f"--{key.replace('_', '-')}={value}" for key, value in config.items()]


def runs_of(experiment: str) -> list:
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def history(run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(mlflow.MlflowClient().get_metric_history(run_id, key), key=lambda m: m.step)]


def test_two_gloo_ranks_equal_one_process_with_the_global_batch(jets_file, tmp_path):
    settings = {**TINY, "data": str(jets_file), "checkpoint_dir": str(tmp_path / "ckpt")}
    single = pretrain(PretrainConfig(**settings, batch_size=32, experiment="ddp-single"), progress=False)

    done = torchrun(["-m", "mae_tracker", "pretrain", *cli_args({**settings, "batch_size": 16,
                                                                 "experiment": "ddp-two"}), "--no-progress"],
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = runs_of("ddp-two")
    assert len(runs) == 1, "only rank 0 opens a run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["world_size"], params["global_batch_size"], params["batch_size"]) == ("2", "32", "16")

    for key in ("train_loss", "train_loss_step", "test_loss", "train_eval_loss"):
        ddp, ref = history(run.info.run_id, key), history(single["run_id"], key)
        assert len(ddp) == len(ref) > 0, key
        np.testing.assert_allclose(ddp, ref, rtol=2e-4, atol=1e-6, err_msg=key)
    ddp_model = load_model(f"runs:/{run.info.run_id}/mae", kind="mae")[0].mae.state_dict()
    ref_model = load_model(f"runs:/{single['run_id']}/mae", kind="mae")[0].mae.state_dict()
    assert ddp_model.keys() == ref_model.keys()
    for name in ref_model:
        a, b = ddp_model[name], ref_model[name]
        if name.endswith("attn.qkv.bias"):
            # The key bias's true gradient is exactly zero (softmax ignores a shift shared by all
            # keys); what is left is float noise that Adam normalises to full-size steps, so it
            # cannot agree between two summation orders. Query and value biases must.
            dim = len(a) // 3
            a, b = torch.cat([a[:dim], a[2 * dim:]]), torch.cat([b[:dim], b[2 * dim:]])
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=name)


KILL_RANK_1 = textwrap.dedent("""
    import os, sys
    from mae_tracker.train import loop
    from mae_tracker.train.config import PretrainConfig
    from mae_tracker.train.pretrain import pretrain

    original = loop.train_one_epoch
    def dying(*args, **kwargs):
        if int(os.environ["RANK"]) == 1 and args[4] == 1:  # rank 1 dies at the start of epoch 1
            os._exit(3)
        return original(*args, **kwargs)
    loop.train_one_epoch = dying
    pretrain(PretrainConfig(data=sys.argv[1], batch_size=16, experiment="ddp-dies", **{TINY!r}), progress=False)
""").replace("{TINY!r}", repr(TINY))


def test_a_dying_rank_fails_the_job_and_the_run_then_torchrun_resumes_it(jets_file, tmp_path):
    script = tmp_path / "dies.py"
    script.write_text(KILL_RANK_1)
    done = torchrun([str(script), str(jets_file)], cwd=tmp_path)
    assert done.returncode != 0
    runs = runs_of("ddp-dies")
    assert len(runs) == 1
    assert runs[0].info.status == "FAILED", "never left RUNNING"
    reason = runs[0].data.tags["end_reason"]
    assert reason, reason
    run_id = runs[0].info.run_id
    assert len(history(run_id, "train_loss")) == 1  # epoch 0 was logged, then the job stopped
    # every rank continues from rank 0's checkpoint of epoch 0, in the same run
    done = torchrun(["-m", "mae_tracker", "pretrain", f"--resume={run_id}", "--no-progress"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(runs_of("ddp-dies")) == 1
    assert mlflow.get_run(run_id).info.status == "FINISHED"
    assert len(history(run_id, "train_loss")) == 2


def test_helpers_are_no_ops_on_a_world_of_one():
    assert distributed.context().world_size == 1 and distributed.context().is_main
    assert distributed.on_main(lambda x: x + 1, 1) == 2
    assert distributed.broadcast_object("x") == "x"
    t = torch.ones(2)
    assert torch.equal(distributed.all_reduce_sum(t), torch.ones(2))
    config = PretrainConfig(batch_size=32, lr=1e-3, lr_scaling="linear")
    assert loop.global_batch_size(config) == 32 and loop.peak_lr(config) == pytest.approx(1e-3 * 32 / 256)
    assert loop.peak_lr(PretrainConfig(lr=1e-3)) == 1e-3
    with pytest.raises(ValueError, match="lr_scaling"):
        loop.peak_lr(PretrainConfig(lr_scaling="sqrt"))
    assert loop.steps_per_epoch(100, config) == 3


def test_a_sweep_under_torchrun_trains_every_trial_on_both_ranks_and_prunes_them_together(jets_file, tmp_path):
    """`torchrun -m mae_tracker.sweep`: rank 0 runs Optuna and MLflow; rank 1 trains each trial
    with it (pretraining and the probe objective), leaves a pruned trial at the same epoch, and
    is released when the sweep ends. Trials 0-1 complete; trial 2 and 3 (a rerun with a pruner
    that always prunes) stop after epoch 0."""
    import optuna

    from test_sweep import ALWAYS_PRUNE, EXPERIMENT, parent_runs, write_spec

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = write_spec(tmp_path, jets_file, "ddp-sweep", n_trials=2, fixed={
        "data": str(jets_file), "epochs": 2, "batch_size": 16, "depth": 2, "probe_train_jets": 64,
        "probe_val_jets": 64, "eval_jets": 64, "image_every": 0})
    done = torchrun(["-m", "mae_tracker.sweep", str(spec), "--storage", storage, "--no-progress"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    spec = write_spec(tmp_path, jets_file, "ddp-sweep", n_trials=4, pruner=ALWAYS_PRUNE, fixed={
        "data": str(jets_file), "epochs": 2, "batch_size": 16, "depth": 2, "probe_train_jets": 64,
        "probe_val_jets": 64, "eval_jets": 64, "image_every": 0})
    done = torchrun(["-m", "mae_tracker.sweep", str(spec), "--storage", storage, "--no-progress"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    trials = optuna.load_study(study_name="ddp-sweep", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    assert all(0.0 < t.value <= 1.0 for t in trials[:2])
    (parent,) = parent_runs("ddp-sweep")
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list",
                              filter_string="tags.arm = 'pretrain'")
    pretrains = {r.data.tags["mlflow.runName"]: r for r in runs if r.data.tags["mlflow.runName"].startswith(
        "trial-") and r.data.params.get("world_size") == "2"}
    assert sorted(pretrains) == [f"trial-{n}-pretrain" for n in range(4)]  # one run per trial, not per rank
    for name, run in pretrains.items():
        assert run.data.params["global_batch_size"] == "32"
        pruned = name in ("trial-2-pretrain", "trial-3-pretrain")
        assert run.info.status == ("KILLED" if pruned else "FINISHED"), name
        assert len(history(run.info.run_id, "train_loss")) == (1 if pruned else 2), name
    probes = mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list",
                                filter_string="tags.arm = 'probe'")
    probes = [r for r in probes if r.data.params.get("world_size") == "2"]
    assert len(probes) == 2 and all(r.info.status == "FINISHED" for r in probes)


RANK_0_BREAKS = textwrap.dedent("""
    import os, sys
    from mae_tracker.train import pretrain

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation broke on rank 0 only")
    if os.environ["RANK"] == "0":
        pretrain._eval_loss = broken
    from mae_tracker.sweep.runner import run_sweep
    run_sweep(sys.argv[1], storage=sys.argv[2])
""")


def test_a_failure_on_rank_0_alone_ends_the_sweep_job_instead_of_hanging(jets_file, tmp_path):
    """Rank 1 waits at the epoch's end for rank 0, which failed: the trial cannot go on together,
    so the job ends (torchrun stops rank 1) and every run says FAILED, none RUNNING."""
    from test_sweep import EXPERIMENT, child_runs, parent_runs, write_spec

    script = tmp_path / "rank0_breaks.py"
    script.write_text(RANK_0_BREAKS)
    spec = write_spec(tmp_path, jets_file, "ddp-sweep-breaks", n_trials=2, fixed={
        "data": str(jets_file), "epochs": 2, "batch_size": 16, "depth": 2, "probe_train_jets": 0,
        "probe_val_jets": 0, "eval_jets": 32, "image_every": 0})
    done = torchrun([str(script), str(spec), f"sqlite:///{tmp_path / 'optuna.db'}"], cwd=tmp_path, timeout=240)
    assert done.returncode != 0
    assert "RanksOutOfStep" in done.stderr and "evaluation broke on rank 0 only" in done.stderr
    (parent,) = parent_runs("ddp-sweep-breaks")
    assert mlflow.get_run(parent.info.run_id).info.status == "FAILED"
    (trial,) = child_runs(parent.info.run_id).values()  # the sweep stopped at its first trial
    assert trial.info.status == "FAILED"
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list",
                              filter_string="tags.mlflow.runName = 'trial-0-pretrain'")
    assert [r.info.status for r in runs if r.data.tags.get("mlflow.parentRunId") == trial.info.run_id] == ["FAILED"]
