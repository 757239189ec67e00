"""The package layout holds: data/ reads files and never needs the simulation stack; sim/ is an
optional extra whose absence is one clear line."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import mae_tracker

PACKAGE = Path(mae_tracker.__file__).parent
SIM_STACK = ("pythia8mc", "fastjet", "awkward")
BLOCK = "import sys\nfor name in {names!r}:\n    sys.modules[name] = None\n"


def imported_modules(path: Path) -> list[str]:
    """Every module a file imports, at any depth (lazy imports inside functions included)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize("path", sorted((PACKAGE / "data").glob("*.py")), ids=lambda p: p.name)
def test_data_imports_no_simulation(path):
    forbidden = [name for name in imported_modules(path)
                 if name.split(".")[0] in SIM_STACK or name == "mae_tracker.sim" or name.startswith("mae_tracker.sim.")]
    assert forbidden == [], f"{path.name} imports {forbidden}"


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK.format(names=SIM_STACK) + code],
                          capture_output=True, text=True, timeout=300)


def test_data_package_imports_without_the_simulation_stack():
    modules = sorted(f"mae_tracker.data.{p.stem}" for p in (PACKAGE / "data").glob("*.py") if p.stem != "__init__")
    proc = run_blocked(f"import importlib\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
                       "assert not [n for n in sys.modules if n.split('.')[:2] == ['mae_tracker', 'sim']]\n"
                       "print('ok')")
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr


def test_generate_without_the_extra_is_one_line(tmp_path):
    out = tmp_path / "jets.h5"
    proc = run_blocked("from mae_tracker.cli import main\n"
                       f"main(['generate', '--out', {str(out)!r}, '--n-jets', '4', '--no-progress'])")
    assert proc.returncode == 1
    assert proc.stderr == "Error: event generation needs the simulation extra: pip install 'mae-tracker[sim]'\n"
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_default_dataset_without_the_extra_names_it(tmp_path):
    proc = run_blocked("import os\n"
                       f"os.environ['MAE_TRACKER_CACHE'] = {str(tmp_path)!r}\n"
                       "from mae_tracker.sim import SimulationMissing\n"
                       "from mae_tracker.sim.default import default_dataset\n"
                       "try:\n    default_dataset(progress=False)\n"
                       "except SimulationMissing as err:\n    print(err)\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "event generation needs the simulation extra: pip install 'mae-tracker[sim]'\n"
