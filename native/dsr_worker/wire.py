"""Length-prefixed JSON frames over a stream socket: a 4-byte big-endian length, then that many
bytes of UTF-8 JSON (one object). docs/worker-protocol.md is the contract."""

from __future__ import annotations

import json
import socket
import struct
import threading

MAX_FRAME = 64 << 20
_LEN = struct.Struct(">I")


class Wire:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.out: list[bytes] = []
        self.lock = threading.Lock()

    def queue(self, msg: dict) -> None:
        """Buffers a frame; flush() sends everything queued in one write (one per scheduler step)."""
        data = json.dumps(msg, separators=(",", ":"), allow_nan=False).encode()
        self.out.append(_LEN.pack(len(data)) + data)

    def flush(self) -> None:
        if not self.out:
            return
        data, self.out = b"".join(self.out), []
        with self.lock:
            self.sock.sendall(data)

    def send(self, msg: dict) -> None:
        self.queue(msg)
        self.flush()

    def _exact(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            part = self.sock.recv(n - len(buf))
            if not part:
                return None
            buf += part
        return bytes(buf)

    def read(self) -> dict | None:
        """The next frame, or None at end of stream. A malformed frame raises ValueError."""
        head = self._exact(4)
        if head is None:
            return None
        (n,) = _LEN.unpack(head)
        if n > MAX_FRAME:
            raise ValueError(f"frame of {n} bytes exceeds the {MAX_FRAME}-byte limit")
        body = self._exact(n)
        if body is None:
            return None
        msg = json.loads(body)
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise ValueError("frame is not a JSON object with a string 'type'")
        return msg
