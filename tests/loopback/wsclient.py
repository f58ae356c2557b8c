"""A small WebSocket client (wsproto over a trio socket) for tests that open hundreds of them.

trio-websocket runs a reader task per connection and reads ahead into its own queue; this one
reads only when asked, as little as asked, on a socket whose receive buffer can be made small,
so that a client that reads slowly is slow on the wire too (the node's send path backs up), not
only in the test's own buffers.
"""

from __future__ import annotations

import socket
from collections import deque

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Message, Ping, RejectConnection, Request,
                            TextMessage)


class WsClosed(Exception):
    pass


class WsClient:
    def __init__(self, stream: trio.SocketStream, ws: WSConnection, read_size: int) -> None:
        self._stream, self._ws, self.read_size = stream, ws, read_size
        self._messages: deque[str | bytes] = deque()
        self._partial: list[str | bytes] = []
        self.closed = False

    @classmethod
    async def connect(cls, hostport: str, path: str, headers: list[tuple[str, str]], rcvbuf: int | None = None,
                      read_size: int = 65536) -> WsClient:
        """`rcvbuf`: the socket's SO_RCVBUF, set before connecting so that the TCP window is small."""
        host, port = hostport.rsplit(":", 1)
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            await sock.connect((host, int(port)))
        except BaseException:
            sock.close()
            raise
        client = cls(trio.SocketStream(sock), WSConnection(ConnectionType.CLIENT), read_size)
        request = Request(host=hostport, target=path, extra_headers=[(k.encode(), v.encode()) for k, v in headers])
        await client._stream.send_all(client._ws.send(request))
        while True:
            for event in await client._events():
                if isinstance(event, AcceptConnection):
                    return client
                if isinstance(event, RejectConnection):
                    await client.aclose()
                    raise WsClosed(f"refused with status {event.status_code}")

    async def _events(self) -> list:
        data = await self._stream.receive_some(self.read_size)
        if not data:
            self.closed = True
            raise WsClosed("connection closed")
        self._ws.receive_data(data)
        events = list(self._ws.events())
        for event in events:
            if isinstance(event, Ping):
                await self._stream.send_all(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.closed = True
            elif isinstance(event, Message):
                self._partial.append(event.data)
                if event.message_finished:
                    joined = "".join(self._partial) if isinstance(event, TextMessage) else b"".join(self._partial)
                    self._messages.append(joined)
                    self._partial = []
        return events

    async def receive(self) -> str | bytes:
        """The next whole message; reads the socket (`read_size` bytes at a time) until there is one."""
        while not self._messages:
            if self.closed:
                raise WsClosed("connection closed")
            await self._events()
        return self._messages.popleft()

    async def send(self, message: str | bytes) -> None:
        event = TextMessage(message) if isinstance(message, str) else BytesMessage(message)
        await self._stream.send_all(self._ws.send(event))

    async def aclose(self) -> None:
        await self._stream.aclose()
