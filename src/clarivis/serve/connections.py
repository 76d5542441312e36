"""Connections that cannot lock the server out: uvicorn's HTTP protocols with a deadline for a
request's headers, a cap on idle connections and (httptools) a cap on a request head's size.

uvicorn alone times out a keep-alive connection only after it has answered a request on it: a
client that connects and never sends a byte, or sends half a header line now and then (slowloris),
is held forever, and its `limit_concurrency` counts such connections, so 64 of them made every
request, /healthz included, a 503. Here:

- a request's headers must be complete within `header_timeout_s` of the connection opening, or of
  its first byte after a keep-alive pause (uvicorn's own keep-alive timeout covers the pause);
  a connection past it is closed (with 408 when it had sent part of a request);
- at most `max_idle` connections may wait without a request in progress: a new one beyond that
  closes the one waiting longest (a real client sends its request at once, so an attacker's
  connections go first; a reused keep-alive connection that is closed is simply reopened);
- with httptools, a request head (request line and headers) over `max_header_bytes` gets 400
  (h11 has the same limit built in: uvicorn's h11_max_incomplete_event_size).

Nothing here counts requests in progress: those are bounded by what they hold (limits.BodyLimit's
turns for requests with a body, the batcher's queue), never by how many sockets are open.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

# Seconds a client has to send a request's headers: a LAN client sends them in milliseconds and
# a phone on a bad link in well under a second; nginx waits 60 s, Apache's mod_reqtimeout 20-40 s.
# 10 s frees a silent connection 6x sooner than nginx and still never cuts a real client short.
HEADER_TIMEOUT_S = 10.0
# Connections waiting without a request in progress (keep-alive clients, silent sockets): a load
# balancer or a pool of clients keeps tens; 256 leaves room for that, far from the usual 1,024
# file descriptors a process may hold, and 256 silent sockets cost only kernel buffers.
MAX_IDLE_CONNECTIONS = 256
# Bytes of one request head: 8 KB is what most servers take per header line; 64 KB leaves room
# for large cookies and bearer tokens and keeps a never-ending header from filling memory.
MAX_HEADER_BYTES = 64 * 1024
_TIMEOUT_MESSAGE = b"request headers not received in time"
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                     b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
                     % (len(_TIMEOUT_MESSAGE), _TIMEOUT_MESSAGE))


class GuardedConnection:
    """The guard, mixed into uvicorn's H11Protocol or HttpToolsProtocol (the subclasses below):
    it only watches uvicorn's state (`cycle`, the transport, the keep-alive timer)."""

    header_timeout_s: float = HEADER_TIMEOUT_S
    max_idle: int = MAX_IDLE_CONNECTIONS

    # set by uvicorn's protocols; declared for the type checker
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    connections: set[Any]
    cycle: Any
    timeout_keep_alive_task: asyncio.TimerHandle | None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._header_timer: asyncio.TimerHandle | None = None
        self._partial = False  # bytes of a request received, its headers not complete yet
        self.waiting_since = self.loop.time()  # when it last started waiting for a request
        self._arm_header_timer()
        self._close_longest_idle()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self.transport.is_closing():
            self._disarm_header_timer()
        elif self.in_request:
            self._partial = False
            self._disarm_header_timer()
        else:
            self._partial = True
            if self._header_timer is None and self.timeout_keep_alive_task is None:
                # a new request after a keep-alive pause: uvicorn stopped its idle timer on the
                # first byte and would now wait for the rest forever
                self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.in_request:  # (h11 may have started a pipelined request already)
            self.waiting_since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    @property
    def in_request(self) -> bool:
        """Headers received and the answer not complete: the app is working on it."""
        return self.cycle is not None and not self.cycle.response_complete

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.in_request or self.transport.is_closing():
            return
        if self._partial:  # a client that sent part of a request hears why; a silent one is just closed
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()

    def _close_longest_idle(self) -> None:
        """Over max_idle connections waiting without a request: close the one waiting longest."""
        idle = [c for c in self.connections if c is not self and isinstance(c, GuardedConnection)
                and not c.in_request and not c.transport.is_closing()]
        if len(idle) >= self.max_idle:
            oldest = min(idle, key=lambda c: c.waiting_since)
            oldest._disarm_header_timer()
            oldest.transport.close()


class GuardedH11Protocol(GuardedConnection, H11Protocol):
    """h11 with the guard (uvicorn --http h11)."""


try:
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # uvicorn without its [standard] extras: h11 only
    GuardedHttpToolsProtocol: type | None = None
else:
    class GuardedHttpToolsProtocol(GuardedConnection, HttpToolsProtocol):  # type: ignore[no-redef]
        """httptools (uvicorn's default when installed) with the guard and a head size limit:
        llhttp itself has none, so a header that never ends would grow in memory."""

        max_header_bytes: int = MAX_HEADER_BYTES

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._head_bytes = 0
            self._in_head = False
            super().connection_made(transport)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._in_head or self.transport.is_closing():
                return
            # a head still incomplete after this chunk: all of it was head (a chunk that also
            # ended a previous request's body counts whole; that takes pipelining, which is rare)
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                if self.in_request:  # a pipelined head behind a request still in progress
                    self.transport.close()
                else:
                    self.send_400_response(f"request head over {self.max_header_bytes // 1024} KB")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_bytes = 0
            super().on_headers_complete()

    del httptools


def guarded_protocol() -> type:
    """The protocol uvicorn's "auto" would pick (httptools when installed, else h11), guarded."""
    return GuardedHttpToolsProtocol or GuardedH11Protocol
