#!/usr/bin/env bash
# Set-up, then the server on the embedded default model and a demo program against it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PORT=${PORT:-30000}
python3 -m sglang.launch_server --port "$PORT" > /tmp/sglang-demo-server.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  if curl -sf "http://127.0.0.1:$PORT/health" > /dev/null; then break; fi
  if ! kill -0 $SERVER 2>/dev/null; then cat /tmp/sglang-demo-server.log; exit 1; fi
  sleep 1
done
echo "server ready on port $PORT (log: /tmp/sglang-demo-server.log)"
python3 examples/demo.py --port "$PORT"
if [ "${KEEP_SERVER:-0}" = "1" ]; then echo "server keeps running (Ctrl-C to stop)"; wait $SERVER; fi
