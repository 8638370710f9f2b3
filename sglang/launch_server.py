"""`python -m sglang.launch_server`: parse the flags and serve until Ctrl-C / SIGTERM."""

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
    from sglang.srt.entrypoints.http_server import launch_server

    try:
        return launch_server(server_args)
    except (ValueError, OSError, RuntimeError) as e:
        logger.error("the server could not start: %s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
