"""``addiagnosis web``: serve the web app (trame and aiohttp are imported only when the server starts)."""

from __future__ import annotations

from addiagnosis.errors import AddiagnosisError
from addiagnosis.web import DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT


def cmd_web(args) -> int:
    try:
        from addiagnosis.web.gateway import serve
    except ImportError as exc:  # aiohttp comes with trame: both are the `web` extra
        raise AddiagnosisError(f"the web app needs the 'web' extra: pip install 'addiagnosis[web]' ({exc})") from None
    try:
        import trame_slicer  # noqa: F401
    except ImportError:
        raise AddiagnosisError("the web app needs trame-slicer: pip install 'addiagnosis[web]'") from None
    return serve(host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, retention_min=args.retention_min,
                 grace_s=args.session_grace_s, max_sessions=args.max_sessions, access_log=args.access_log,
                 model=args.model, device=args.device)


def register_cli(subparsers) -> None:
    w = subparsers.add_parser("web")
    w.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    w.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    w.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest accepted upload in MB (default {DEFAULT_MAX_UPLOAD_MB})")
    w.add_argument("--retention-min", type=float, default=60.0,
                   help="a session and its files are deleted at the latest this many minutes after it starts "
                        "(default 60)")
    w.add_argument("--session-grace-s", type=float, default=30.0,
                   help="seconds a session survives with no page connected (reloads), then it is deleted (default 30)")
    w.add_argument("--max-sessions", type=int, default=8, help="sessions served at once (default 8)")
    w.add_argument("--access-log", help="append the access log to this file (default: stderr)")
    w.add_argument("--model", help="model package selected when a session starts (default: the bundled model)")
    w.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    w.set_defaults(func=cmd_web)
