"""The gateway's websocket proxy when one side vanishes mid-stream: no "Task exception was never retrieved".

A browser stand-in (aiohttp's websocket client) sends messages through the gateway's proxy to a session
worker stand-in (a real aiohttp websocket server) that answers each with a frame, as trame-slicer's views do,
and then dies mid-session (its connection aborted). The proxy's pump writing to the worker fails with
ClientConnectionResetError in the same turn as the other pump ends; unless the proxy collects both, asyncio
reports it when the task is collected ("Task exception was never retrieved ... ClientConnectionResetError",
seen in the server's console). Measured: the proxy as it was reports it on this scenario, the proxy as it is
does not.
"""

from __future__ import annotations

import asyncio
import gc
import os
from pathlib import Path

import pytest

pytest.importorskip("aiohttp", reason="the web extra is not installed (pip install '.[web]')")

from aiohttp import ClientSession, web  # noqa: E402

from addiagnosis.web.gateway import Gateway, Worker, free_port  # noqa: E402

FRAME = os.urandom(64 * 1024)  # about a JPEG frame of a view
MESSAGES_BEFORE_DEATH = 50


class Running:
    """Stands in for a worker's Popen: alive."""

    pid = -1

    def poll(self):
        return None


async def _site(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def _dying_worker(request: web.Request) -> web.WebSocketResponse:
    """Answer each message with a frame; after a few, the connection is aborted (the process died)."""
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    count = 0
    async for _msg in ws:
        count += 1
        await ws.send_bytes(FRAME)
        if count == MESSAGES_BEFORE_DEATH:
            request.transport.abort()
            break
    return ws


async def _browser(port: int) -> None:
    """Send (mouse events, say) and read frames until the websocket ends."""
    async with ClientSession() as session, session.ws_connect(f"http://127.0.0.1:{port}/ws", max_msg_size=0) as ws:
        async def read() -> None:
            async for _msg in ws:
                pass

        reader = asyncio.ensure_future(read())
        try:
            while not ws.closed:
                await ws.send_str("x" * 1000)
                await asyncio.sleep(0)
        except Exception:  # the gateway closed the connection under us: what a browser sees too
            pass
        await asyncio.gather(reader, return_exceptions=True)


async def _proxied_sessions(folder: Path, rounds: int) -> None:
    worker_app = web.Application()
    worker_app.router.add_get("/ws", _dying_worker)
    worker_runner, worker_port = await _site(worker_app)
    gateway = Gateway(spare=False)
    await gateway.on_startup(None)
    worker = Worker("test", folder, worker_port, Running())

    async def proxy(request: web.Request) -> web.StreamResponse:
        return await gateway._proxy_ws(request, worker)

    gateway_app = web.Application()
    gateway_app.router.add_get("/ws", proxy)
    gateway_runner, gateway_port = await _site(gateway_app)
    try:
        for _ in range(rounds):
            await _browser(gateway_port)
        for _ in range(5):  # collect the proxy's finished tasks: an unretrieved exception is reported now
            gc.collect()
            await asyncio.sleep(0.05)
        assert worker.connections == 0
    finally:
        gateway._reaper.cancel()
        await gateway.client.close()
        await gateway_runner.cleanup()
        await worker_runner.cleanup()
        gateway.root.rmdir()


def test_dying_worker_leaves_no_unretrieved_task(tmp_path: Path) -> None:
    reports: list[dict] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reports.append(context))
        await _proxied_sessions(tmp_path, rounds=3)

    asyncio.run(main())
    assert [f"{r.get('message')}: {r.get('exception')!r}" for r in reports] == []
