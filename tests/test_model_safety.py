"""Loading a model never runs code from it (issue: a teammate's pickled champion ran os.system).

A pickle whose unpickling creates a marker file is registered as the family's champion: every
command that takes a model URI refuses it with one line, and the marker never appears, while
unpickling it the plain MLflow way does create it (so the payload is real). A model in the safe
layout whose models-from-code file carries a payload loads through the project's loader without
running it. An honest old pickle is converted once by ``migrate-model --i-trust-this-pickle``.
A promoted tagger served by ``mlflow models serve`` gives the in-process probabilities.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import h5py
import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from conftest import own_tracking_store
from mae_tracker.cli import main
from mae_tracker.train import saved_model
from mae_tracker.train.config import DownstreamConfig, PretrainConfig
from mae_tracker.train.downstream import train_classifier
from mae_tracker.train.pretrain import pretrain

EXPERIMENT = "test-model-safety"
FAMILY = "mae-vit-32x32x3"
SMALL = dict(batch_size=32, pretrain_fraction=0.4, train_fraction=0.4, val_fraction=0.1, test_fraction=0.1,
             seed=3, log_every_steps=5, experiment=EXPERIMENT)


@pytest.fixture(scope="module", autouse=True)
def own_store(tmp_path_factory):
    """A store of this module's own, so its hostile champion never meets another module's loads."""
    with own_tracking_store(tmp_path_factory.mktemp("safety-store")):
        yield


@pytest.fixture(scope="module")
def pretrained(jets_file):
    return pretrain(PretrainConfig(data=str(jets_file), epochs=1, max_jets=160, image_every=0, image_jets=2,
                                   eval_jets=64, probe_train_jets=100, probe_val_jets=64, **SMALL), progress=False)


class Payload:
    """Unpickling this calls os.system: the attack from the issue, writing a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _log_pickle(model: nn.Module, metadata: dict, name: str = "encoder") -> str:
    import mlflow.pytorch

    with mlflow.start_run(experiment_id=mlflow.set_experiment(EXPERIMENT).experiment_id) as run:
        mlflow.set_tag("arm", "pretrain")
        mlflow.log_metrics({"val_probe_auc": 0.9, "val_probe_auc_se": 0.01})
        mlflow.pytorch.log_model(model, name=name, serialization_format="pickle", metadata=metadata,
                                 pip_requirements=["torch"])
    return run.info.run_id


def _register_champion(run_id: str, name: str = "encoder") -> str:
    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(FAMILY)
    except mlflow.exceptions.MlflowException:
        pass
    model_id = mlflow.models.get_model_info(f"runs:/{run_id}/{name}").model_id
    version = client.create_model_version(FAMILY, source=f"models:/{model_id}", run_id=run_id, model_id=model_id)
    client.set_registered_model_alias(FAMILY, "champion", version.version)
    return version.version


@pytest.fixture(scope="module")
def hostile_champion(pretrained, tmp_path_factory):
    """A pickled 'encoder' with a payload, metadata copied from a real one (format key faked too)."""
    marker = tmp_path_factory.mktemp("attack") / "pwned"
    model = nn.Sequential(nn.Linear(2, 2))
    model.payload = Payload(marker)
    metadata = {**mlflow.models.get_model_info(pretrained["encoder_uri"]).metadata}
    run_id = _log_pickle(model, metadata)
    assert not marker.exists(), "logging must not trigger the payload"
    _register_champion(run_id)
    return {"uri": f"models:/{FAMILY}@champion", "run_id": run_id, "marker": marker}


def test_the_payload_is_real_when_unpickled_the_plain_way(hostile_champion):
    """Control: MLflow's own pickle loader runs it (in a child process, so this one stays clean)."""
    marker = hostile_champion["marker"]
    code = f"import mlflow.pytorch; mlflow.pytorch.load_model({hostile_champion['uri']!r})"
    subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True, timeout=120)
    assert marker.exists()
    marker.unlink()


def test_every_command_refuses_a_pickled_champion_and_never_runs_it(hostile_champion, jets_file, tmp_path):
    uri, marker = hostile_champion["uri"], hostile_champion["marker"]
    runner = CliRunner()
    small = ["--data", str(jets_file), "--epochs", "1", "--batch-size", "32", "--experiment", EXPERIMENT,
             "--no-progress"]
    commands = {
        "finetune": ["finetune", "--encoder-uri", uri, *small],
        "probe": ["probe", "--encoder-uri", uri, *small],
        "scratch": ["scratch", "--encoder-uri", uri, *small],
        "encode": ["encode", uri, str(jets_file), "--out", str(tmp_path / "latents.h5"), "--no-progress"],
        "label-efficiency": ["label-efficiency", uri, "--experiment", EXPERIMENT],
        "promote": ["promote", hostile_champion["run_id"]],
        "migrate-model (no trust flag)": ["migrate-model", uri],
    }
    runs_before = len(mlflow.search_runs(experiment_names=[EXPERIMENT]))
    for name, args in commands.items():
        result = runner.invoke(main, args)
        assert result.exit_code == 1, (name, result.output)
        error = result.output.strip().splitlines()[-1]
        assert error.startswith("Error: ") and len(result.output.strip().splitlines()) == 1, (name, result.output)
        assert "refusing" in error, (name, error)
        assert uri in error or name == "promote", (name, error)  # promote names the run's own model URI
        assert not marker.exists(), f"{name} ran the payload"
    assert not (tmp_path / "latents.h5").exists()
    assert len(mlflow.search_runs(experiment_names=[EXPERIMENT])) == runs_before, "a refused model starts no run"
    with pytest.raises(saved_model.UnsafeModelError, match="refusing model"):
        saved_model.load_model(uri)
    assert os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION") is None, "the switch is restored after a load"
    assert not marker.exists()


def test_the_loader_never_runs_the_code_file_of_a_model(pretrained, tmp_path):
    """Our exact layout (weights + config), but a models-from-code file with a payload: the project
    rebuilds from the installed code; only mlflow.pyfunc.load_model (the user's choice) runs the file."""
    marker = tmp_path / "pwned-by-code"
    code = tmp_path / "evil_model.py"
    code.write_text(saved_model.CODE_FILE.read_text() + f"\nimport pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    files = tmp_path / "files"
    files.mkdir()
    real, metadata = saved_model.load_model(pretrained["encoder_uri"], kind="encoder")
    artifacts = saved_model.write_files(real, files)
    with mlflow.start_run(experiment_id=mlflow.set_experiment(EXPERIMENT).experiment_id) as run:
        mlflow.pyfunc.log_model(name="encoder", python_model=str(code), artifacts=artifacts,
                                pip_requirements=["torch"], metadata={**metadata})
    marker.unlink(missing_ok=True)  # logging a models-from-code file runs it once, in the writer's process
    loaded, _ = saved_model.load_model(f"runs:/{run.info.run_id}/encoder", kind="encoder")
    assert not marker.exists()
    raw = torch.rand(2, 32, 32, 3) * 20
    with torch.no_grad():
        torch.testing.assert_close(loaded(raw), real(raw))
    mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/encoder")
    assert marker.exists(), "control: MLflow's pyfunc loader does run it"


def test_weights_that_are_not_safetensors_are_refused(pretrained, tmp_path):
    real, metadata = saved_model.load_model(pretrained["encoder_uri"], kind="encoder")
    artifacts = saved_model.write_files(real, tmp_path)
    torch.save(real.state_dict(), artifacts["weights"])  # a pickle under the safetensors name
    with mlflow.start_run(experiment_id=mlflow.set_experiment(EXPERIMENT).experiment_id) as run:
        mlflow.pyfunc.log_model(name="encoder", python_model=str(saved_model.CODE_FILE), artifacts=artifacts,
                                pip_requirements=["torch"], metadata={**metadata})
    with pytest.raises(saved_model.UnsafeModelError, match="cannot rebuild it from its weights"):
        saved_model.load_model(f"runs:/{run.info.run_id}/encoder")


def test_migrate_model_converts_a_trusted_old_pickle_once(pretrained, jets_file):
    """An encoder as mae-tracker logged it before (EncoderFeatures pickle, preprocessed NCHW input)."""
    real, metadata = saved_model.load_model(pretrained["encoder_uri"], kind="encoder")
    legacy = types.ModuleType("mae_tracker.models.export")

    class EncoderFeatures(nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, images):
            return self.encoder.features(images)

    EncoderFeatures.__module__ = legacy.__name__
    legacy.EncoderFeatures = EncoderFeatures
    sys.modules[legacy.__name__] = legacy
    try:
        run_id = _log_pickle(EncoderFeatures(real.encoder), {k: v for k, v in metadata.items()
                                                             if k != saved_model.FORMAT_KEY})
    finally:
        del sys.modules[legacy.__name__]
    old_version = _register_champion(run_id)
    uri = f"models:/{FAMILY}@champion"
    result = CliRunner().invoke(main, ["migrate-model", uri, "--i-trust-this-pickle"])
    assert result.exit_code == 0, result.output
    assert "aliases champion moved" in result.output
    client = mlflow.MlflowClient()
    new_version = client.get_registered_model(FAMILY).aliases["champion"]
    assert int(new_version) == int(old_version) + 1
    assert client.get_model_version(FAMILY, old_version).tags["unsafe_pickle"].startswith("migrated to")
    assert mlflow.get_run(run_id).info.status == "FINISHED"
    migrated, _ = saved_model.load_model(uri, kind="encoder")
    raw = torch.rand(3, 32, 32, 3) * 20
    with torch.no_grad():
        torch.testing.assert_close(migrated(raw), real(raw))
    # runs:/ now resolves to the safe copy too, and a second migration has nothing to do
    saved_model.load_model(f"runs:/{run_id}/encoder", kind="encoder")
    again = CliRunner().invoke(main, ["migrate-model", uri, "--i-trust-this-pickle"])
    assert again.exit_code == 1 and "already in the safe format" in again.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_a_promoted_tagger_serves_the_in_process_probabilities(pretrained, jets_file):
    result = train_classifier(DownstreamConfig.for_arm("finetune", data=str(jets_file), epochs=1,
                                                       encoder_uri=pretrained["encoder_uri"], **SMALL), progress=False)
    client = mlflow.MlflowClient()
    family = "tagger-vit-32x32x3"
    try:
        client.create_registered_model(family)
    except mlflow.exceptions.MlflowException:
        pass
    model_id = mlflow.models.get_model_info(f"runs:/{result['run_id']}/classifier").model_id
    version = client.create_model_version(family, source=f"models:/{model_id}", run_id=result["run_id"],
                                          model_id=model_id)
    client.set_registered_model_alias(family, "champion", version.version)
    uri = f"models:/{family}@champion"
    with h5py.File(jets_file, "r") as f:
        raw = f["X_jets"][:40].astype(np.float32)  # rows of the file exactly as stored
    tagger, _ = saved_model.load_model(uri, kind="tagger")
    with torch.no_grad():
        expected = tagger(torch.from_numpy(raw)).numpy()
    port = _free_port()
    mlflow_bin = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    server = subprocess.Popen([mlflow_bin, "models", "serve", "-m", uri, "--env-manager", "local",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              # the scoring server execs `uvicorn` from PATH: the venv's own
                              env={**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    pytest.fail(f"mlflow models serve did not start:\n{server.stdout.read()}")
                time.sleep(0.5)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": raw.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            served = np.asarray(json.loads(response.read())["predictions"], dtype=np.float32)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    assert served.shape == (40,)
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    requirements = Path(mlflow.artifacts.download_artifacts(f"{uri}/requirements.txt")).read_text().split()
    assert f"mae-tracker=={__import__('mae_tracker').__version__}" in requirements
