"""`python -m sglang.launch_server`: parse the flags and serve until Ctrl-C / SIGTERM.

With --nnodes N and --node-rank k > 0 it serves nothing: it runs node k's tensor-parallel
ranks until node 0's scheduler stops them (exit 0) or one of them fails (exit 1).
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

from sglang.srt.server_args import prepare_server_args

logger = logging.getLogger("sglang.launch_server")


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        server_args = prepare_server_args(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=server_args.logging_level(), format="[%(asctime)s] %(levelname)s %(message)s"
    )
    if server_args.node_rank > 0:  # this node runs tensor-parallel workers only
        from sglang.srt.distributed.workers import run_node_workers

        try:
            return run_node_workers(server_args)
        except (ValueError, OSError, RuntimeError) as e:
            logger.error("the workers could not start: %s", e)
            return 1
    from sglang.srt.entrypoints.http_server import launch_server

    try:
        return launch_server(server_args)
    except (ValueError, OSError, RuntimeError) as e:
        logger.error("the server could not start: %s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
