#!/usr/bin/env bash
# Idempotent set-up of ./.venv.
#
# The environment itself lives in a cache outside the clone, keyed by a hash of the dependency
# list (scripts/venv_key.py), and ./.venv is a symlink to it: a fresh clone (CI clones afresh
# every run) reuses the multi-GB torch install, and any change of a dependency builds a new one.
# The project itself is installed editable, pointing at this clone, on every call (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
CACHE=${ATELIER_VENV_CACHE:-$HOME/.cache/atelier/venvs}
KEY=$("$PYTHON" scripts/venv_key.py pyproject.toml)
TARGET="$CACHE/$KEY"

if [ ! -f "$TARGET/.atelier-complete" ]; then
    echo "[install] building the virtualenv $TARGET (first time for this dependency list; torch is large)"
    mkdir -p "$CACHE"
    BUILD="$TARGET.building.$$"
    rm -rf "$BUILD"
    "$PYTHON" -m venv "$BUILD"
    "$BUILD/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
    # Dependencies only, from pyproject.toml (the project itself is installed below).
    "$PYTHON" - > "$BUILD/requirements.txt" <<'PY'
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = list(p["dependencies"]) + [d for ds in p.get("optional-dependencies", {}).values() for d in ds]
print("\n".join(deps))
PY
    "$BUILD/bin/python" -m pip install --progress-bar off -r "$BUILD/requirements.txt"
    touch "$BUILD/.atelier-complete"
    rm -rf "$TARGET"
    # venvs hard-code their path in scripts: rebuild in place by renaming is not safe, so
    # fix the shebangs/activate scripts to the final location.
    mv "$BUILD" "$TARGET"
    grep -rlI --null "$BUILD" "$TARGET/bin" "$TARGET/pyvenv.cfg" 2>/dev/null | xargs -0 -r sed -i "s#$BUILD#$TARGET#g"
fi

if [ "$(readlink .venv 2>/dev/null)" != "$TARGET" ]; then
    rm -rf .venv
    ln -s "$TARGET" .venv
fi

# Editable install of this clone (cheap; re-pointed when another clone used the same cache).
# Checked from another directory, so that the clone on sys.path[0] does not fake it.
HERE=$(pwd -P)
if [ ! -x .venv/bin/atelier ] || ! (cd / && "$HERE/.venv/bin/python" -c "import app, os, sys; sys.exit(0 if os.path.realpath(app.__file__) == os.path.join('$HERE', 'app', '__init__.py') else 1)") 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
fi
