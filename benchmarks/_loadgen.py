"""A lean HTTP/1.1 load generator for the serving benchmark: asyncio streams on keep-alive connections.

Why not httpx: a general client spends about a millisecond of CPU per request building and parsing it, which on a
two-core machine shared with the servers under test makes the client the bottleneck, so every server measures the
same throughput. Here a request's bytes are built once and every answer is parsed only as far as its status line,
its ``Content-Length`` and the one header the rollback measurement reads, so the client costs a few tens of
microseconds per request and the servers' own costs decide the figures. It speaks only what the servers under test
answer: HTTP/1.1 responses with a ``Content-Length`` (no chunked bodies), on loopback.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Answer:
    status: int
    version: str | None  # the X-Model-Version header, when present
    body: bytes


def request_bytes(url: str, body: bytes, method: str = "POST") -> bytes:
    parts = urlsplit(url)
    path = parts.path or "/"
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @classmethod
    def to(cls, url: str) -> Connection:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80)

    async def _open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def send(self, raw: bytes) -> Answer:
        """Send one prepared request and read its answer (reconnecting once if the server closed the
        connection in between)."""
        for attempt in (0, 1):
            if self._writer is None:
                await self._open()
            assert self._reader is not None and self._writer is not None
            try:
                self._writer.write(raw)
                head = await self._reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt:
                    raise
                continue
            lines = head.split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            length, version, close = 0, None, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"x-model-version":
                    version = value.strip().decode()
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            body = await self._reader.readexactly(length) if length else b""
            if close:
                await self.close()
            return Answer(status, version, body)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except ConnectionError:
                pass
        self._reader = self._writer = None


async def closed_loop(url: str, body: bytes, seconds: float, concurrency: int, warm: int = 20) -> dict[str, float]:
    """``concurrency`` connections each sending ``body`` back to back for ``seconds`` (a closed loop: the next
    request leaves when the previous answer arrived). Latency per answer; every answer must be a 200."""
    raw = request_bytes(url, body)
    conns = [Connection.to(url) for _ in range(concurrency)]
    for c in conns:
        for _ in range(max(1, warm // concurrency)):
            await c.send(raw)
    latencies: list[float] = []
    errors = 0
    end = time.perf_counter() + seconds

    async def worker(conn: Connection) -> None:
        nonlocal errors
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            answer = await conn.send(raw)
            latencies.append(time.perf_counter() - t0)
            if answer.status != 200:
                errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    wall = time.perf_counter() - start
    for c in conns:
        await c.close()
    import numpy as np

    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(ms),
        "errors": errors,
        "rps": round(len(ms) / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }
