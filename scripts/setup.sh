#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv.
#
#   bash scripts/setup.sh           what a user needs: torch, the project, event generation (sim)
#                                   and optuna-dashboard; the default data ships with the package
#   bash scripts/setup.sh --tests   also the test, team (PostgreSQL driver), browser (Playwright)
#                                   and docs extras, and the Debian packages the team and UI tests
#                                   need: postgresql (a throw-away server per test session) and
#                                   chromium (the UI test's browser)
#
# torch and torchvision come first, pinned to the wheels that import together on this kind of
# machine. Rerunning is cheap: it installs again only when pyproject.toml changed or more extras
# are asked for.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="sim,dashboard"
if [ "${1:-}" = "--tests" ]; then
    extras="test,sim,team,browser,dashboard,docs"
    missing=()
    compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" > /dev/null || missing+=(postgresql)
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    if [ ${#missing[@]} -gt 0 ]; then
        sudo=""
        [ "$(id -u)" = 0 ] || sudo=sudo
        if [ -n "$sudo" ] && ! { command -v sudo > /dev/null && sudo -n true 2> /dev/null; }; then
            echo "note: ${missing[*]} missing and no root: the team tests will skip (apt-get install ${missing[*]})"
        else
            echo "installing Debian packages: ${missing[*]}"
            $sudo apt-get update -qq
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null
        fi
    fi
elif [ -n "${1:-}" ]; then
    echo "scripts/setup.sh: unknown option '$1' (use no option, or --tests)" >&2
    exit 2
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.mae-tracker-installed
installed=$(cat "$stamp" 2> /dev/null || true)
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [[ ",$installed," != *",$extras,"* && "$installed" != "test,sim,team,browser,dashboard,docs" ]]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
    .venv/bin/python -m pip install -q -e ".[$extras]"
    echo "$extras" > "$stamp"
fi
echo "environment ready: $(pwd)/.venv"
