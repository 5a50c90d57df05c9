"""A client that ends its TLS connection with close_notify and waits for the server's, as
Python's `ssl` does in `unwrap()`.

usage: tls_unwrap.py <port> <ca file> <http|websocket>
Sends an HTTP request (or opens a Pusher WebSocket session), reads the answer, then unwraps.
Prints `unwrapped` and exits 0 when the server answered with its own close_notify.
"""

import base64
import os
import socket
import ssl
import sys


def read_until(conn: ssl.SSLSocket, seen: bytes, marker: bytes) -> bytes:
    while marker not in seen:
        chunk = conn.recv(4096)
        if not chunk:
            raise SystemExit(f"closed before {marker!r}: {seen!r}")
        seen += chunk
    return seen


def main() -> None:
    port, ca_file, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    context = ssl.create_default_context(cafile=ca_file)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = context.wrap_socket(raw, server_hostname="localhost")
    if mode == "http":
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        seen = read_until(conn, b"", b"\r\n\r\n")
        head, _, body = seen.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += conn.recv(4096)
    else:
        key = base64.b64encode(os.urandom(16)).decode()
        conn.sendall(
            (
                "GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: localhost\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        seen = read_until(conn, b"", b"\r\n\r\n")
        assert seen.startswith(b"HTTP/1.1 101"), seen
        read_until(conn, seen, b"pusher:connection_established")
    conn.unwrap()
    print("unwrapped", flush=True)


main()
