#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv.
# torch and torchvision come first, pinned to the wheels that import together on
# this kind of machine; then the project itself with its test, team (PostgreSQL driver)
# and browser (Playwright) extras.
# The team tests also need two Debian packages, installed here when missing: postgresql
# (a throw-away database server per test session) and chromium (the UI test's browser).
set -euo pipefail
cd "$(dirname "$0")/.."

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

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.mae-tracker-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
    .venv/bin/python -m pip install -q -e ".[test,sim,team,browser,dashboard,docs]"
    touch "$stamp"
fi
echo "environment ready: $(pwd)/.venv"
