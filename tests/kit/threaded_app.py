"""An aiohttp application served on 127.0.0.1 from a thread with its own event loop.

The Kubernetes stand-ins (``tests/k8s_standin.py``, ``tests/k8s_apps_standin.py``) serve
OpenBao or the rotation engine whatever the test's own event loop is doing, so they run
their server here: a subclass adds its routes (:meth:`routes`) and, for TLS, makes its
certificate (:meth:`_ssl_context`); ``start()``/``stop()`` or ``with`` do the rest.
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
import threading
from typing import Self

from aiohttp import web


class ThreadedApp:
    """A real HTTP(S) server on an ephemeral port of 127.0.0.1, in a daemon thread."""

    thread_name = "threaded-app"

    def __init__(self, *, tls: bool, tmp_prefix: str) -> None:
        self.tls = tls
        self.port = 0
        self._tmp = tempfile.TemporaryDirectory(prefix=tmp_prefix)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def _ssl_context(self) -> ssl.SSLContext:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> Self:
        ready = threading.Event()
        failure: list[BaseException] = []
        ssl_ctx = self._ssl_context() if self.tls else None

        async def serve() -> None:
            app = web.Application()
            self.routes(app)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_ctx)
            await site.start()
            self.port = int(self._runner.addresses[0][1])

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(serve())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name=self.thread_name, daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        if not self.port:
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        self._loop = self._thread = None
        self._tmp.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
