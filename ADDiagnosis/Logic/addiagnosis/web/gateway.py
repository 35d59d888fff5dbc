"""The web app's front door: one port, one worker process per browser session, uploads, downloads, clean-up.

A browser without a valid session cookie gets a new session: a worker process (``addiagnosis.web.session``)
listening on its own loopback port, with its own folder under the server's private temporary root. Every
request carrying the cookie is proxied to that worker (HTTP and the page's websocket), so sessions never
share a scene, a state or a file. One spare worker is kept started so a new page need not wait for
torch/VTK to import. ``POST /upload`` streams the body into the session's folder under a random name
(size limit checked before and while reading); ``GET /download/NAME`` serves the session's latest results.
A session ends when no page has been connected to it for ``grace_s`` seconds, when it reaches its retention
time, when its worker dies, or when the server stops: its worker is stopped and its folder deleted.

The access log has timestamps, anonymous session ids, events and outcomes: no IP addresses, no file names.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import ClientSession, ClientTimeout, WSMsgType, web

from addiagnosis import RESEARCH_USE
from addiagnosis.web.common import COMPARE_DOWNLOADS, DOWNLOADS, access_line, write_access

COOKIE = "addiagnosis_session"
START_TIMEOUT_S = 120.0
SPARE_DELAY_S = 15.0  # a new spare starts this long after a claim: its imports would slow the new session's work
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "upgrade", "content-length", "content-encoding",
               "host", "proxy-connection", "te", "trailer"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Worker:
    """One session worker process and its folder."""

    sid: str  # anonymous id used in the access log and the folder name (not the cookie)
    folder: Path
    port: int
    proc: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    token: str | None = None  # the session cookie value once a browser claims it
    claimed: float | None = None
    connections: int = 0
    idle_since: float = field(default_factory=time.monotonic)
    ready: bool = False
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)  # the worker's websocket key

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


class Gateway:
    def __init__(self, max_upload_mb: float = 256, retention_min: float = 60.0, grace_s: float = 30.0,
                 max_sessions: int = 8, access_log: str | None = None, model: str | None = None,
                 device: str = "cpu", spare: bool = True):
        self.max_upload = int(max_upload_mb * 1024 * 1024)
        self.max_upload_mb = max_upload_mb
        self.retention_s = retention_min * 60.0
        self.grace_s = grace_s
        self.max_sessions = max_sessions
        self.access_log = access_log
        self.model = model
        self.device = device
        self.keep_spare = spare
        self.root = Path(tempfile.mkdtemp(prefix="addiagnosis-web-"))  # mode 0700: this user only
        self.sessions: dict[str, Worker] = {}
        self.spare: Worker | None = None
        self._spare_task: asyncio.Task | None = None
        self.client: ClientSession | None = None
        self._reaper: asyncio.Task | None = None
        self._claim_lock = asyncio.Lock()
        self._last_claim = -1e9

    # ---------------------------------------------------------------------------------- workers
    def log(self, sid: str, event: str, outcome: str, **fields) -> None:
        write_access(self.access_log, access_line(sid, event, outcome, **fields))

    def _spawn(self) -> Worker:
        sid = secrets.token_hex(4)
        folder = self.root / sid
        folder.mkdir(mode=0o700)
        port = free_port()
        secret = secrets.token_urlsafe(32)  # never trame's default key: a client must get it from this gateway
        key = self.root / f"{sid}.key"  # in the 0700 root, not the session's folder; removed once it is read
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
            fh.write(secret)
        cmd = [sys.executable, "-m", "addiagnosis.web.session", "--port", str(port), "--folder", str(folder),
               "--session-id", sid, "--device", self.device, "--authKeyFile", str(key)]
        if self.access_log:
            cmd += ["--access-log", self.access_log]
        if self.model:
            cmd += ["--model", self.model]
        env = dict(os.environ)
        env.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                             *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
        env["WSLINK_READY_MSG"] = ""  # the worker's stdout carries access-log lines only
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr,
                                stderr=None if os.environ.get("ADDIAGNOSIS_WEB_DEBUG") else subprocess.DEVNULL,
                                start_new_session=True)
        return Worker(sid, folder, port, proc, secret=secret)

    async def _wait_ready(self, worker: Worker) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and worker.alive:
            try:
                async with self.client.get(f"http://127.0.0.1:{worker.port}/index.html",
                                           timeout=ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        (self.root / f"{worker.sid}.key").unlink(missing_ok=True)  # the worker has read it
                        worker.ready = True
                        return True
            except Exception:
                pass
            await asyncio.sleep(0.1)
        return False

    async def _prepare_spare(self) -> None:
        worker = self._spawn()
        self.spare = worker
        if not await self._wait_ready(worker):
            self.log(worker.sid, "worker", "error")
            self._end(worker, "failed")
            if self.spare is worker:
                self.spare = None

    def _ensure_spare(self) -> None:
        if self.keep_spare and self.spare is None and (self._spare_task is None or self._spare_task.done()) \
                and len(self.sessions) < self.max_sessions and time.monotonic() - self._last_claim > SPARE_DELAY_S:
            self._spare_task = asyncio.ensure_future(self._prepare_spare())

    async def _claim(self) -> Worker | None:
        """A ready worker for a new session (the spare when there is one)."""
        async with self._claim_lock:
            if len(self.sessions) >= self.max_sessions:
                return None
            if self._spare_task is not None and not self._spare_task.done():
                await self._spare_task
            worker = self.spare if self.spare is not None and self.spare.alive and self.spare.ready else None
            self.spare = None
            if worker is None:
                worker = self._spawn()
                if not await self._wait_ready(worker):
                    self._end(worker, "failed")
                    return None
            worker.token = secrets.token_urlsafe(24)
            worker.claimed = worker.idle_since = self._last_claim = time.monotonic()
            self.sessions[worker.token] = worker
            self.log(worker.sid, "session", "started", sessions=len(self.sessions))
        self._ensure_spare()
        return worker

    def _end(self, worker: Worker, reason: str) -> None:
        if worker.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.proc.pid, signal.SIGTERM)
            try:
                worker.proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.proc.pid, signal.SIGKILL)
                worker.proc.wait(timeout=5)
        shutil.rmtree(worker.folder, ignore_errors=True)
        (self.root / f"{worker.sid}.key").unlink(missing_ok=True)
        if worker.token is not None and self.sessions.get(worker.token) is worker:
            del self.sessions[worker.token]
            self.log(worker.sid, "session", "ended", reason=reason, sessions=len(self.sessions))

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for worker in list(self.sessions.values()):
                if not worker.alive:
                    self._end(worker, "worker-exit")
                elif now - (worker.claimed or worker.started) > self.retention_s:
                    self._end(worker, "retention")
                elif worker.connections == 0 and now - worker.idle_since > self.grace_s:
                    self._end(worker, "closed")
            if self.spare is not None and not self.spare.alive:
                self._end(self.spare, "failed")
                self.spare = None
            self._ensure_spare()

    # --------------------------------------------------------------------------------- handlers
    def _session(self, request) -> Worker | None:
        token = request.cookies.get(COOKIE)
        worker = self.sessions.get(token) if token else None
        return worker if worker is not None and worker.alive else None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        worker = self._session(request)
        if worker is None:
            if request.path not in ("/", "/index.html"):
                return web.Response(status=410, text="session ended: reload the page\n")
            worker = await self._claim()
            if worker is None:
                self.log("-", "session", "refused", reason="busy")
                return web.Response(status=503, text=f"The server is busy; try again in a minute. {RESEARCH_USE}\n")
            response = await self._proxy_http(request, worker)
            response.set_cookie(COOKIE, worker.token, httponly=True, samesite="Strict", path="/")
            return response
        if request.path == "/ws" or request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._proxy_ws(request, worker)
        return await self._proxy_http(request, worker)

    async def _proxy_http(self, request: web.Request, worker: Worker) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS and k.lower() != "cookie"}
        body = await request.read() if request.can_read_body else None
        url = f"http://127.0.0.1:{worker.port}{request.rel_url}"
        try:
            async with self.client.request(request.method, url, headers=headers, data=body, allow_redirects=False,
                                           timeout=ClientTimeout(total=60)) as resp:
                payload = await resp.read()
                out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS}
                return web.Response(status=resp.status, body=payload, headers=out)
        except Exception:
            return web.Response(status=502, text="session worker unavailable: reload the page\n")

    async def _proxy_ws(self, request: web.Request, worker: Worker) -> web.StreamResponse:
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        # no permessage-deflate: the views' frames are JPEG (deflate gains nothing) and aiohttp deflates a message
        # over 16 KB in a thread, a hop per frame (scripts/bench/bench_web_click.py: a cluster click 0.71x as long)
        down = web.WebSocketResponse(max_msg_size=0, protocols=protocols, autoping=True, compress=False)
        await down.prepare(request)
        worker.connections += 1
        try:
            async with self.client.ws_connect(f"http://127.0.0.1:{worker.port}{request.rel_url}", max_msg_size=0,
                                              protocols=protocols, autoping=True) as up:
                async def pump(src, dst):
                    async for msg in src:
                        if msg.type == WSMsgType.TEXT:
                            await dst.send_str(msg.data)
                        elif msg.type == WSMsgType.BINARY:
                            await dst.send_bytes(msg.data)
                        else:
                            break

                tasks = [asyncio.ensure_future(pump(down, up)), asyncio.ensure_future(pump(up, down))]
                _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
                # every task's end collected, a closed peer's ClientConnectionResetError included: none is left
                # for asyncio to report as "Task exception was never retrieved"
                await asyncio.gather(*tasks, return_exceptions=True)
        except Exception:
            pass
        finally:
            worker.connections -= 1
            worker.idle_since = time.monotonic()
            await down.close()
        return down

    async def upload(self, request: web.Request) -> web.Response:
        worker = self._session(request)
        if worker is None:
            return web.json_response({"ok": False, "error": "session ended: reload the page"}, status=410)
        limit_text = f"larger than the {self.max_upload_mb:g} MB upload limit"
        if request.content_length is not None and request.content_length > self.max_upload:
            self.log(worker.sid, "upload", "refused", reason="size")
            return web.json_response({"ok": False, "error": f"file is {limit_text}"}, status=413)
        uploads = worker.folder / "uploads"
        uploads.mkdir(exist_ok=True)
        stem = secrets.token_hex(16)
        part = uploads / f"{stem}.part"
        size, head = 0, b""
        try:
            with open(part, "wb") as fh:
                async for chunk in request.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    if size > self.max_upload:
                        raise ValueError(limit_text)
                    if len(head) < 4:
                        head += chunk[: 4 - len(head)]
                    fh.write(chunk)
        except ValueError as exc:
            part.unlink(missing_ok=True)
            self.log(worker.sid, "upload", "refused", reason="size")
            return web.json_response({"ok": False, "error": f"file is {exc}"}, status=413)
        except Exception:
            part.unlink(missing_ok=True)
            self.log(worker.sid, "upload", "error")
            return web.json_response({"ok": False, "error": "upload interrupted"}, status=400)
        if size == 0:
            part.unlink(missing_ok=True)
            self.log(worker.sid, "upload", "refused", reason="empty")
            return web.json_response({"ok": False, "error": "the file is empty"}, status=400)
        # server-made name, kind by content: gzip (.nii.gz), zip (a DICOM series: .zip), else .nii
        name = f"{stem}.nii.gz" if head[:2] == GZIP_MAGIC else f"{stem}.zip" if head[:4] == ZIP_MAGIC \
            else f"{stem}.nii"
        part.rename(uploads / name)
        self.log(worker.sid, "upload", "ok", bytes=size)
        return web.json_response({"ok": True, "upload": name})

    async def download(self, request: web.Request) -> web.StreamResponse:
        worker = self._session(request)
        name = request.match_info["name"]
        if worker is None or name not in DOWNLOADS + COMPARE_DOWNLOADS:
            return web.Response(status=404, text="not found\n")
        path = worker.folder / "results" / name
        if not path.is_file():
            return web.Response(status=404, text="no result yet: diagnose first\n")
        self.log(worker.sid, "download", "ok", file=name)
        return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{name}"',
                                               "Cache-Control": "no-store"})

    async def session_url(self, request: web.Request) -> web.Response:
        """trame's page asks a launcher for its websocket (``POST paraview/``) before it falls back to ``ws``
        beside the page; answering it here saves every page load a 405. USE_HOST is the page's own host (and
        ws:// becomes wss:// under https); the path is the page's, which a path-prefixing proxy keeps."""
        worker = self._session(request)
        if worker is None:
            return web.json_response({"error": "session ended: reload the page"}, status=410)
        page = urllib.parse.urlsplit(request.headers.get("Referer", "")).path or "/"
        folder = page if page.endswith("/") else page.rsplit("/", 1)[0] + "/"
        # the worker's websocket key, to this session's page only: a local client that reaches the worker's
        # loopback port directly (no cookie, no gateway) is refused by the worker
        return web.json_response({"sessionURL": f"ws://USE_HOST{folder}ws", "secret": worker.secret},
                                 headers={"Cache-Control": "no-store"})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "sessions": len(self.sessions)})

    # -------------------------------------------------------------------------------- lifecycle
    async def on_startup(self, app) -> None:
        self.client = ClientSession(cookie_jar=None, auto_decompress=False)
        self._reaper = asyncio.ensure_future(self._reap())
        self._ensure_spare()

    async def on_shutdown(self, app) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        if self._spare_task is not None and not self._spare_task.done():
            self._spare_task.cancel()
        for worker in list(self.sessions.values()):
            self._end(worker, "server-stop")
        if self.spare is not None:
            self._end(self.spare, "server-stop")
            self.spare = None
        if self.client is not None:
            await self.client.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_upload + 1024)
        app.router.add_get("/healthz", self.health)
        app.router.add_post("/upload", self.upload)
        app.router.add_get("/download/{name}", self.download)
        app.router.add_post("/paraview/", self.session_url)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self.on_startup)
        app.on_shutdown.append(self.on_shutdown)
        return app


def serve(host: str = "127.0.0.1", port: int = 8080, max_upload_mb: float = 256, retention_min: float = 60.0,
          grace_s: float = 30.0, max_sessions: int = 8, access_log: str | None = None, model: str | None = None,
          device: str = "cpu") -> int:
    """Run the web app until interrupted (Ctrl-C or SIGTERM)."""
    from addiagnosis.models.package import find_package

    find_package(model)  # an unknown model is a one-line error before anything starts
    gateway = Gateway(max_upload_mb, retention_min, grace_s, max_sessions, access_log, model, device)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        from addiagnosis.errors import AddiagnosisError

        sock.close()
        raise AddiagnosisError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    bound = sock.getsockname()[1]
    print(f"ADDiagnosis web app on http://{host if ':' not in host else f'[{host}]'}:{bound}/  (Ctrl-C stops it)",
          flush=True)
    print(RESEARCH_USE, flush=True)
    write_access(access_log, access_line("-", "server", "started", port=bound))
    web.run_app(gateway.app(), sock=sock, access_log=None, print=None, handle_signals=True)
    write_access(access_log, access_line("-", "server", "stopped"))
    return 0
