"""The floor under any relay of pgproxy's design: a TCP relay on the same event loop that
forwards each read as it is, looking at nothing (no framing, no state, no decisions).

The side-by-side benchmark runs it (`benchmarks.run --relay-floor`) to show how much of the
distance to pgbouncer is the cost of relaying in Python on asyncio at all, before pgproxy
does any work of its own. It is not a product: no authentication of its own (the client
logs in to the server through it), no limits, no TLS.

    .venv/bin/python -m benchmarks.relay_floor LISTEN_PORT UPSTREAM_PORT
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import cast

from pgproxy.server import new_event_loop


class _Side(asyncio.Protocol):
    """One socket of a relayed connection: what it reads is written to the other one."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.early: list[bytes] = []  # read before the peer was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.early.append(data)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def serve(listen_port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task[None]] = set()

    async def connect(client: _Side) -> None:
        try:
            _, upstream = await loop.create_connection(_Side, "127.0.0.1", upstream_port)
        except OSError:
            if client.transport is not None:
                client.transport.close()
            return
        assert upstream.transport is not None
        if client.transport is None or client.transport.is_closing():
            upstream.transport.close()  # the client left while the upstream was connecting
            return
        upstream.peer, client.peer = client, upstream
        for data in client.early:
            upstream.transport.write(data)
        client.early = []

    def accepted() -> _Side:
        client = _Side()
        task = loop.create_task(connect(client))
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return client

    server = await loop.create_server(accepted, "127.0.0.1", listen_port)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with server:
        await stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("listen_port", type=int)
    parser.add_argument("upstream_port", type=int)
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(serve(args.listen_port, args.upstream_port))


if __name__ == "__main__":
    main()
