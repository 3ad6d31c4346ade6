"""The floor under any relay of pgproxy's design: a TCP relay on the same event loop that
forwards each read as it is, looking at nothing (no framing, no state, no decisions).

With `--looking` it also does the least that pgproxy's design requires of the allow path,
and nothing else: it walks the message headers of every read in both directions, takes
each Query's shape key (pgproxy's own `shape_key`, DESIGN.md decision 4) and looks it up
in a dict, counts ReadyForQuery messages, and looks each RowDescription up in a set (the
result guard, decision 5). It treats each read as whole messages, as pgbench's are.

The side-by-side benchmark runs both (`benchmarks.run --relay-floor`) to show how much of
the distance to pgbouncer is the cost of relaying in Python on asyncio at all, and of the
looking the design cannot do without, before pgproxy's own bookkeeping. Neither is a
product: no authentication of its own (the client logs in to the server through it), no
limits, no TLS, no decisions.

    .venv/bin/python -m benchmarks.relay_floor [--looking] LISTEN_PORT UPSTREAM_PORT
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import cast

from pgproxy.analysis.cache import shape_key
from pgproxy.server import new_event_loop
from pgproxy.wire import messages as m
from pgproxy.wire.codec import unpack_length


class _Side(asyncio.Protocol):
    """One socket of a relayed connection: what it reads is written to the other one."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.early: list[bytes] = []  # read before the peer was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.look(data)
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.early.append(data)

    def look(self, data: bytes) -> None:
        """Nothing: the floor looks at nothing."""

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class _LookingClient(_Side):
    """The client's socket of the looking relay: message headers, and each Query's shape key."""

    def __init__(self, decided: dict[str | None, bool]) -> None:
        super().__init__()
        self.decided = decided

    def look(self, data: bytes) -> None:
        pos, size = 0, len(data)
        while size - pos >= 5:
            (length,) = unpack_length(data, pos + 1)
            if data[pos] == m.QUERY:
                shape = shape_key(data[pos + 5:pos + length].decode("utf-8", "surrogateescape"))
                if self.decided.get(shape) is None:
                    self.decided[shape] = True
            pos += 1 + length


class _LookingServer(_Side):
    """The server's socket of the looking relay: message headers, ReadyForQuery, RowDescription."""

    def __init__(self, clean: set[bytes]) -> None:
        super().__init__()
        self.clean = clean
        self.cycles = 0

    def look(self, data: bytes) -> None:
        pos, size = 0, len(data)
        while size - pos >= 5:
            (length,) = unpack_length(data, pos + 1)
            if data[pos] == m.READY_FOR_QUERY:
                self.cycles += 1
            elif data[pos] == m.ROW_DESCRIPTION:
                description = data[pos + 5:pos + 1 + length]
                if description not in self.clean:
                    self.clean.add(description)
            pos += 1 + length


async def serve(listen_port: int, upstream_port: int, looking: bool = False) -> None:
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task[None]] = set()
    decided: dict[str | None, bool] = {}
    clean: set[bytes] = set()

    def upstream_side() -> _Side:
        return _LookingServer(clean) if looking else _Side()

    async def connect(client: _Side) -> None:
        try:
            _, upstream = await loop.create_connection(upstream_side, "127.0.0.1", upstream_port)
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
        client = _LookingClient(decided) if looking else _Side()
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
    parser.add_argument("--looking", action="store_true",
                        help="also do the least looking pgproxy's design requires (see above)")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(serve(args.listen_port, args.upstream_port, args.looking))


if __name__ == "__main__":
    main()
