#!/usr/bin/env python3
"""Wait until a rewind-agent answers hello + ping over TCP; print seconds waited.

Usage: agent-probe.py HOST:PORT TIMEOUT_SECONDS
Speaks the agent framing (4-byte big-endian length + JSON). Exit 0 when the
agent answered {"kind":"pong"}, 1 on timeout.
"""
import json
import socket
import struct
import sys
import time


def call(sock, msg):
    body = json.dumps(msg).encode()
    sock.sendall(struct.pack(">I", len(body)) + body)
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            raise ConnectionError("closed")
        head += chunk
    (n,) = struct.unpack(">I", head)
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return json.loads(data)


def ready(host, port):
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.settimeout(1)
            call(s, {"op": "hello", "protocol": 1})
            return call(s, {"op": "ping"}).get("kind") == "pong"
    except (OSError, ValueError):
        return False


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    timeout = float(sys.argv[2])
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if ready(host, int(port)):
            print(f"{time.monotonic() - start:.2f}")
            return 0
        time.sleep(0.1)
    return 1


sys.exit(main())
