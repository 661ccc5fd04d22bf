#!/usr/bin/env bash
# Run SecondLook: web server, Celery workers and beat, and (unless REDIS_URL is set) an embedded Redis.
set -euo pipefail
cd "$(dirname "$0")"
# the runtime and the training set: this starts a training worker too
REQUIREMENTS=requirements-training.txt . scripts/bootstrap.sh
exec "$VENV/bin/python" -m melanoma_site.devserver "$@"
