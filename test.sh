#!/usr/bin/env bash
# Run the whole test suite. Uses DATABASE_URL / SECONDLOOK_TEST_REDIS_URL when set (CI: PostgreSQL + Redis),
# otherwise SQLite and an embedded Redis. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
REQUIREMENTS=requirements-dev.txt . scripts/bootstrap.sh
if ! command -v chromium >/dev/null 2>&1; then
  # Browser tests drive Debian's chromium through Playwright.
  if [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq chromium || (apt-get update -qq && apt-get install -y -qq chromium)) >/dev/null
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    (sudo apt-get install -y -qq chromium || (sudo apt-get update -qq && sudo apt-get install -y -qq chromium)) >/dev/null
  else
    echo "Browser tests need Debian's chromium: sudo apt-get install chromium" >&2
  fi
fi
exec "$VENV/bin/python" -m pytest "$@"
