"""Regenerate MLproject from the run configs: `python scripts/write_mlproject.py > MLproject`.

The config dataclasses are the single source of truth for parameter names, types and
defaults; tests/test_entry_points.py fails when MLproject drifts from them.
"""

from __future__ import annotations

import dataclasses

from mae_tracker.train.config import ARM_DEFAULTS, DownstreamConfig, PretrainConfig

# Not MLproject parameters: `mlflow run` chooses the experiment and run itself, and
# resuming goes through `mae-tracker <arm> --resume <run_id>`.
NOT_PARAMS = {"experiment", "run_name", "resume", "checkpoint_dir", "arm"}
TYPES = {"int": "int", "float": "float", "str": "string", "bool": "string"}


def entry_point(arm: str, config_cls: type, overrides: dict) -> list[str]:
    lines = [f"  {arm}:", "    parameters:"]
    command = [f"python -m mae_tracker {arm}"]
    for spec in dataclasses.fields(config_cls):
        if spec.name in NOT_PARAMS:
            continue
        default = overrides.get(spec.name, spec.default)
        kind = TYPES[str(spec.type)]
        if isinstance(default, bool):
            default = str(default).lower()
        shown = f'"{default}"' if kind == "string" else default
        lines.append(f"      {spec.name}: {{type: {kind}, default: {shown}}}")
        command.append(f"--{spec.name.replace('_', '-')} {{{spec.name}}}")
    lines.append("    command: >-")
    lines.extend(f"      {part}" for part in command)
    return lines


# The sweep: a sweep YAML file from sweeps/ (relative to the project), optional storage URL
# (empty = the SQLite file beside the tracking store) and worker processes.
SWEEP_ENTRY = """  sweep:
    parameters:
      config: {type: string, default: "sweeps/quick.yaml"}
      storage: {type: string, default: ""}
      n_workers: {type: int, default: 1}
      data: {type: string, default: ""}
    command: >-
      python -m mae_tracker.sweep {config}
      --storage {storage}
      --n-workers {n_workers}
      --data {data}"""


def main() -> None:
    lines = ["# One entry point per arm, and the sweep. Parameters mirror mae_tracker.train.config (tests check that);",
             "# regenerate with: python scripts/write_mlproject.py > MLproject",
             "# Run without conda: mlflow run . -e pretrain --env-manager local",
             "name: mae-tracker", "conda_env: conda.yaml", "", "entry_points:"]
    lines += entry_point("pretrain", PretrainConfig, {})
    for arm in ("finetune", "probe", "scratch"):
        lines += [""] + entry_point(arm, DownstreamConfig, ARM_DEFAULTS[arm])
    lines += ["", SWEEP_ENTRY]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
