# Sourced by run.sh and test.sh: make .venv and install the pinned requirements when they changed.
# REQUIREMENTS (default requirements.txt, the runtime) names the file: run.sh sets
# requirements-training.txt, test.sh requirements-dev.txt.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PY" -m venv "$VENV"; then
    echo "Could not create a virtualenv. On Debian/Ubuntu: sudo apt-get install python3-venv" >&2
    exit 1
  fi
fi
REQS="${REQUIREMENTS:-requirements.txt}"
# one stamp per requirements file (installing the runtime set after the dev set removes nothing)
stamp="$VENV/.${REQS%.txt}.sha256"
want="$(cat "$ROOT"/requirements*.txt "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Installing Python requirements ($REQS) into $VENV (first run takes a few minutes)…"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r "$ROOT/$REQS" -c "$ROOT/constraints.txt"
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
