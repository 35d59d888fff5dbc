"""The session worker's entry: ``python -m addiagnosis.web.session --port P --folder DIR --session-id ID ...``."""

from __future__ import annotations

import os

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # before VTK is imported

import argparse  # noqa: E402
import asyncio  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

from addiagnosis.web.common import STATIC_DIR  # noqa: E402

QUIET_LOGGERS = ("aiohttp.access", "wslink", "trame_server", "trame_client")


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(prog="addiagnosis.web.session")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--folder", required=True)
    parser.add_argument("--session-id", required=True)
    parser.add_argument("--access-log")
    parser.add_argument("--model")
    parser.add_argument("--device", default="cpu")
    # the websocket key the gateway made for this worker (a file only this user can read; trame reads it from
    # the command line too): clients without it are refused, whatever reaches this loopback port
    parser.add_argument("--authKeyFile", required=True)
    return parser.parse_args(argv)


async def watch_parent(parent: int) -> None:
    """A worker whose gateway is gone exits (its folder is the gateway's to delete, or the OS's temp)."""
    while True:
        await asyncio.sleep(2.0)
        if os.getppid() != parent:
            os._exit(0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)

    from trame.app import get_server
    from trame_slicer import module as trame_slicer_module

    from addiagnosis.web.session.logic import Session, SessionConfig
    from addiagnosis.web.session.ui import build_ui

    server = get_server(f"addiagnosis-{args.session_id}", client_type="vue3")
    server.enable_module(trame_slicer_module)
    server.enable_module({"serve": {"addiagnosis": str(STATIC_DIR)}, "scripts": ["addiagnosis/addiagnosis-web.js"],
                          "styles": ["addiagnosis/addiagnosis-web.css"]})
    config = SessionConfig(Path(args.folder), args.session_id, args.access_log, args.model, args.device)
    session = Session(server, config)
    build_ui(server, session)
    parent = os.getppid()

    @server.controller.add("on_server_ready")
    def _ready(**_):
        session.tasks += [asyncio.ensure_future(asyncio.to_thread(session.warm_up)),
                          asyncio.ensure_future(watch_parent(parent))]

    try:
        server.start(host="127.0.0.1", port=args.port, open_browser=False, show_connection_info=False, timeout=0,
                     disable_logging=True)
    finally:
        session.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
