#!/usr/bin/env bash
# A longer fuzz of the HTTP API than CI runs: tests/e2e/test_fuzz.py (schemathesis over
# /openapi.json, hypothesis-made malformed bodies for /generate and /v1/chat/completions) with
# more examples per operation and fresh random inputs each run. No 5xx and a healthy server after.
#
#     bash scripts/fuzz_api.sh            # 200 examples per operation (~10-20 min on 2 cores)
#     bash scripts/fuzz_api.sh 1000       # a longer one
#     bash scripts/fuzz_api.sh 200 -x     # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
examples="${1:-200}"
shift || true
SGLANG_FUZZ_EXAMPLES="$examples" SGLANG_FUZZ_RANDOM=1 \
  python3 -m pytest -q -p no:cacheprovider tests/e2e/test_fuzz.py "$@"
