"""The daemon's own listening socket, as the event loop serves it."""

from __future__ import annotations

import asyncio
import socket

import pytest

from bookiji.daemon.run import listen


async def _nodelay_of_an_accepted_connection(sock: socket.socket) -> int:
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def accepted(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted_sock = writer.get_extra_info("socket")
        seen.set_result(accepted_sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(accepted, sock=sock)
    async with server:
        host, port = sock.getsockname()[:2]
        _reader, writer = await asyncio.open_connection(host, port)
        try:
            return await asyncio.wait_for(seen, 10)
        finally:
            writer.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_connections_on_the_daemon_socket_send_without_nagle(host: str) -> None:
    """With Nagle on, a response's second write waited for the client's delayed ACK: every
    request on a connection carrying one at a time took ~40 ms instead of well under one
    (a bound socket whose protocol was left 0 made asyncio skip TCP_NODELAY)."""
    sock = listen(host, 0)
    assert asyncio.run(_nodelay_of_an_accepted_connection(sock)) != 0


def test_the_socket_accepts_connections_from_the_moment_its_port_is_announced() -> None:
    """The start-up line names the port as soon as it is bound (with `--port 0` it is how
    to find it); a client that connected at once was refused until uvicorn got round to
    listening."""
    sock = listen("127.0.0.1", 0)
    try:
        with socket.create_connection(sock.getsockname()[:2], timeout=5):
            pass  # queued by the kernel: nobody has accepted it yet, and that is fine
    finally:
        sock.close()
