"""A TCP proxy that can cut the network between a client and a real server.

Not a stand-in for Vault: every byte goes to the real OpenBao. It only lets a test
make the server unreachable for the client (connection refused, open
connections dropped) while the server keeps running and others can still use it.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlparse


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    @classmethod
    def to(cls, addr: str) -> TcpProxy:
        """A proxy (not yet up) in front of the server at the URL ``addr``."""
        target = urlparse(addr)
        return cls(target.hostname or "127.0.0.1", target.port or 8200)

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._conns):
            w.close()
        self._conns.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._conns.update({writer, up_writer})

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._conns.difference_update({writer, up_writer})


class LossyProxy(TcpProxy):
    """A TCP proxy that can lose the answer to one request: the request reaches the real
    server (which applies it), the answer never reaches the client, whose connection is
    dropped. What a network cut or a crashed load balancer does to a write in flight."""

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port)
        self._armed: bytes | None = None
        self.lost = 0

    def lose_next_response(self, request_line_prefix: bytes) -> None:
        """Drop the answer to the next request whose first line starts with this."""
        self._armed = request_line_prefix

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._conns.update({writer, up_writer})
        doomed = asyncio.Event()

        async def client_to_server() -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await reader.read(65536):
                    if self._armed is not None and data.startswith(self._armed):
                        self._armed = None
                        doomed.set()
                    up_writer.write(data)
                    await up_writer.drain()
            up_writer.close()

        async def server_to_client() -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await up_reader.read(65536):
                    if doomed.is_set():
                        self.lost += 1
                        break  # the server answered (so it applied it): lose the answer
                    writer.write(data)
                    await writer.drain()
            writer.close()
            up_writer.close()

        await asyncio.gather(client_to_server(), server_to_client())
        self._conns.difference_update({writer, up_writer})
