#!/usr/bin/env bash
# Set-up, lint, then the whole test suite (unit tests and end-to-end tests on the real server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m ruff check sglang tests benchmark
python3 -m pytest -q -p no:cacheprovider tests "$@"
