"""Riding out S3 faults: outages, connection resets, HTTP 500s, replies lost after the write landed, bodies cut off
mid-stream, and multipart uploads left behind.

Every test talks to moto's S3 server through :class:`FaultProxy`, an HTTP proxy on loopback that injects the faults.
The proxy runs in its own process, like the moto server, because some delta-rs calls hold the GIL while they wait
for the endpoint: a proxy thread in the test process could then never answer them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import multiprocessing
import os
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from model_ops_tests.conftest import S3_BUCKET
from model_ops_tests.helpers import MODEL, check_audit, check_invariants, unique_bytes, write_file

# ---------------------------------------------------------------------------------------------------- the proxy

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "content-length",
}


# What a store without conditional writes ignores: the request goes through as if they were not there. (The
# client signs If-None-Match too; the test server does not check signatures, so the stripped request is taken.)
_CONDITIONS = frozenset({"if-none-match", "if-match"})


class _Dropped(Exception):
    """The proxy cut the client's connection on purpose; stop handling it."""


_ERROR_CODES = {"403": "AccessDenied", "500": "InternalError", "503": "SlowDown"}


def _s3_error(code: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>injected by the test proxy</Message><RequestId>0</RequestId></Error>"
    ).encode()


class _ProxyState:
    """What the proxy does to the requests it sees; shared by its connection threads (guarded by ``lock``)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.lock = threading.Lock()
        self.rules: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []
        self.listener: socket.socket | None = None
        self.port = 0
        self.clients: set[socket.socket] = set()
        self.up = threading.Event()
        self.reopen_at = 0.0
        self.rng = random.Random(20130101)

    def match(self, method: str, path: str) -> dict[str, Any] | None:
        """The first rule that applies to this request (counted), as a copy holding the action to take; or None."""
        with self.lock:
            for rule in self.rules:
                if rule.get("method") and rule["method"] != method:
                    continue
                if rule.get("path") and not re.search(rule["path"], path):
                    continue
                if rule.get("once_per_target") and path in rule.setdefault("hit", []):
                    continue
                rule["seen"] = rule.get("seen", 0) + 1
                if rule["seen"] <= rule.get("skip", 0):
                    continue
                if "until" in rule:  # a window that opened at the rule's first use: everything inside it
                    if time.monotonic() > rule["until"]:
                        continue
                else:
                    if (rule["seen"] - rule.get("skip", 0) - 1) % rule.get("every", 1):
                        continue
                    if "prob" in rule and self.rng.random() >= rule["prob"]:
                        continue
                    if rule.get("times") is not None and rule.get("applied", 0) >= rule["times"]:
                        continue
                    if "for_seconds" in rule:
                        rule["until"] = time.monotonic() + rule["for_seconds"]
                rule["applied"] = rule.get("applied", 0) + 1
                if rule.get("once_per_target"):
                    rule["hit"].append(path)
                actions = rule.get("actions") or [rule["action"]]
                return {**rule, "action": actions[(rule["applied"] - 1) % len(actions)]}
        return None

    def record(self, method: str, path: str, outcome: str) -> None:
        with self.lock:
            self.log.append({"method": method, "path": path, "outcome": outcome})

    # The listening socket: closed during an outage, so a client's connect is refused as by a stopped server.

    def open_listener(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self.listener = sock
        self.up.set()

    def outage(self, seconds: float) -> None:
        with self.lock:
            self.reopen_at = time.monotonic() + seconds
            if not self.up.is_set():
                return
            self.up.clear()
            listener, self.listener = self.listener, None
            clients = list(self.clients)
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for c in clients:
            _reset(c)

    def accept_loop(self) -> None:
        while True:
            if not self.up.is_set():
                delay = self.reopen_at - time.monotonic()
                if delay > 0:
                    time.sleep(min(delay, 0.05))
                    continue
                self.open_listener()
            listener = self.listener
            try:
                assert listener is not None
                conn, addr = listener.accept()
            except (OSError, AssertionError):
                continue
            with self.lock:
                self.clients.add(conn)
            threading.Thread(target=self.serve, args=(conn, addr), daemon=True).start()

    def serve(self, conn: socket.socket, addr: Any) -> None:
        try:
            _Handler(conn, addr, self)
        except Exception:  # a client that went away mid-request: nothing to do
            pass
        finally:
            with self.lock:
                self.clients.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()


def _reset(conn: socket.socket) -> None:
    """Abort a TCP connection with RST (SO_LINGER 0), as a crashed peer or a middlebox would."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        conn.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def __init__(self, conn: socket.socket, addr: Any, state: _ProxyState) -> None:
        self.state = state
        super().__init__(conn, addr, state)  # type: ignore[arg-type]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except _Dropped:
            self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _drop(self, *, clean: bool = False) -> None:
        """Cut the client's connection: RST, or a plain close (FIN) when ``clean``."""
        with contextlib.suppress(OSError):
            self.wfile.flush()
        if clean:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            self.connection.close()
        else:
            _reset(self.connection)
        raise _Dropped

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes, *, send_body: bool = True) -> None:
        self.send_response_only(status)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if send_body:
            self.wfile.write(body)
        self.wfile.flush()

    def _forward(self, body: bytes, *, drop: frozenset[str] = frozenset()) -> tuple[int, list[tuple[str, str]], bytes]:
        upstream = http.client.HTTPConnection("127.0.0.1", self.state.upstream_port, timeout=60)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() not in _HOP_BY_HOP and k.lower() not in drop:
                    upstream.putheader(k, v)
            if body or self.command in ("PUT", "POST"):
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body if body else None)
            resp = upstream.getresponse()
            data = resp.read()
            headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            if self.command == "HEAD":
                length = resp.getheader("Content-Length")
                if length is not None:
                    headers.append(("Content-Length", length))
            else:
                headers.append(("Content-Length", str(len(data))))
            return resp.status, headers, data
        finally:
            upstream.close()

    def _proxy(self) -> None:
        body = self._read_body()
        rule = self.state.match(self.command, self.path)
        action = rule["action"] if rule else None
        self.state.record(self.command, self.path, action or "forwarded")
        if action == "outage":
            self.state.outage(rule["seconds"])  # type: ignore[index]
            self._drop()
        if action == "reset":
            self._drop()
        if action in _ERROR_CODES:
            error = _s3_error(_ERROR_CODES[action])
            headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(error)))]
            self._reply(int(action), headers, error, send_body=self.command != "HEAD")
            return
        status, headers, data = self._forward(body, drop=_CONDITIONS if action == "ignore_conditions" else frozenset())
        if action in ("lose_reply", "lose_reply_clean"):
            self._drop(clean=action == "lose_reply_clean")  # the write landed; its reply never arrives
        if action == "cut_body" and self.command == "GET" and status < 300 and len(data) > 1:
            self._reply(status, headers, data[: len(data) // 2])
            self._drop()
        self._reply(status, headers, data, send_body=self.command != "HEAD")

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _proxy


def _serve_proxy(upstream_port: int, control: Any) -> None:
    """The proxy process: serve on a free loopback port and obey the commands sent over ``control``."""
    state = _ProxyState(upstream_port)
    state.open_listener()
    threading.Thread(target=state.accept_loop, daemon=True).start()
    control.send(state.port)
    while True:
        try:
            cmd, arg = control.recv()
        except EOFError:
            return
        if cmd == "rules":
            with state.lock:
                state.rules = [dict(r) for r in arg]
            control.send(None)
        elif cmd == "outage":
            state.outage(arg)
            control.send(None)
        elif cmd == "stats":
            with state.lock:
                control.send({"rules": [dict(r) for r in state.rules], "log": list(state.log)})
        elif cmd == "clear":
            with state.lock:
                state.rules, state.log = [], []
            control.send(None)
        elif cmd == "stop":
            control.send(None)
            return


class FaultProxy:
    """A fault-injecting HTTP proxy in front of the S3 test endpoint, in a process of its own.

    ``rules`` is a list of dicts, tried in order, the first that matches a request deciding its fate.

    ``action``: ``reset``; ``403``, ``500``, ``503`` (an S3 error answer, not forwarded); ``outage`` with
    ``seconds``; ``lose_reply`` (forwarded, then the connection is reset before the reply); ``lose_reply_clean``
    (the same with a plain close); ``cut_body`` (half of a successful GET's body, then a reset);
    ``ignore_conditions`` (forwarded without ``If-None-Match`` and ``If-Match``, as a store that ignores them).

    Optional: ``method``; ``path`` (a regex searched in the request target); ``skip`` (let the first N matches
    through); ``every`` (act on every Nth match); ``prob`` (act with this probability, from a seeded generator);
    ``times`` (act at most N times); ``for_seconds`` (from the first time it acts, act on every match for this long,
    then never again); ``once_per_target`` (act on a request target only the first time: a client's re-sent request
    goes through); ``actions`` (a list used in turn instead of ``action``).
    """

    def __init__(self, upstream: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._control, child = ctx.Pipe()
        port = int(upstream.rsplit(":", 1)[1])
        self._process = ctx.Process(target=_serve_proxy, args=(port, child), daemon=True)
        self._process.start()
        self.port = self._control.recv()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def _ask(self, cmd: str, arg: Any = None) -> Any:
        self._control.send((cmd, arg))
        return self._control.recv()

    def set_rules(self, rules: list[dict[str, Any]]) -> None:
        self._ask("rules", rules)

    def outage(self, seconds: float) -> None:
        """Refuse connections (and cut open ones) for ``seconds``, starting now."""
        self._ask("outage", seconds)

    def clear(self) -> None:
        self._ask("clear")

    def stats(self) -> dict[str, Any]:
        return self._ask("stats")

    def applied(self) -> int:
        return sum(r.get("applied", 0) for r in self.stats()["rules"])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ask("stop")
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()


# ---------------------------------------------------------------------------------------------------- fixtures

# Requests by what they do: a blob upload (boto3), the commit of a Delta version (delta-rs, put-if-absent), the
# probe for a newer commit (boto3 HEAD) and a read of the Delta log (delta-rs).
BLOB_PUT = {"method": "PUT", "path": r"/artifacts/sha256/"}
COMMIT_PUT = {"method": "PUT", "path": r"/registry/events/_delta_log/\d{20}\.json"}
LOG_PROBE = {"method": "HEAD", "path": r"/registry/events/_delta_log/\d{20}\.json"}
LOG_READ = {"method": "GET", "path": r"/registry/events/_delta_log/"}
BLOB_GET = {"method": "GET", "path": r"/artifacts/sha256/"}


@pytest.fixture(scope="module")
def proxy_server(s3_endpoint: str) -> Iterator[FaultProxy]:
    server = FaultProxy(s3_endpoint)
    yield server
    server.close()


@pytest.fixture
def proxy(proxy_server: FaultProxy, s3_root: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """Route model_ops' S3 traffic (boto3 and delta-rs) through the proxy, with no faults to begin with."""
    from model_ops import location

    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy_server.endpoint)
    monkeypatch.delenv("MODEL_OPS_S3_DEADLINE", raising=False)
    location._cached_client.cache_clear()
    location._CONDITIONAL_WRITES_SEEN.clear()
    proxy_server.clear()
    yield proxy_server
    proxy_server.clear()
    proxy_server.outage(0)  # an outage a test started ends with it
    location._cached_client.cache_clear()


@pytest.fixture
def direct(s3_endpoint: str):  # type: ignore[no-untyped-def]
    """A client that talks to the endpoint itself, past the proxy: to set a scene and to check what is stored."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _cli(capsys: pytest.CaptureFixture[str], root: str, *args: str) -> tuple[int, str, str]:
    from model_ops.cli import main

    capsys.readouterr()
    code = main(["--root", root, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _versions(root: str) -> list[tuple[int, str]]:
    from model_ops.registry import Registry

    return [(mv.version, mv.digest) for mv in Registry.open(root).versions(MODEL)]


def _pending_uploads(direct: Any, root: str) -> list[dict[str, Any]]:
    from model_ops.location import resolve_root

    prefix = resolve_root(root).key_prefix + "/"
    return list(direct.list_multipart_uploads(Bucket=S3_BUCKET, Prefix=prefix).get("Uploads", []))


def _model_file(tmp_path: Path, tag: str, size: int = 4096) -> Path:
    return write_file(tmp_path / tag, "model.bin", unique_bytes(tag, size))


# ---------------------------------------------------------------------------------------------------- tests


def test_deadline_setting_and_one_line_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    from model_ops.errors import UsageError
    from model_ops.location import Location, describe, is_transient, s3_deadline

    monkeypatch.delenv("MODEL_OPS_S3_DEADLINE", raising=False)
    assert s3_deadline() == 30
    monkeypatch.setenv("MODEL_OPS_S3_DEADLINE", "2.5")
    assert s3_deadline() == 2.5
    opts = Location("s3://bucket/prefix").delta_storage_options()
    assert opts["retry_timeout"] == "2500ms" and int(opts["max_retries"]) >= 25
    for bad in ("soon", "-1", "nan", "inf"):
        monkeypatch.setenv("MODEL_OPS_S3_DEADLINE", bad)
        with pytest.raises(UsageError, match="MODEL_OPS_S3_DEADLINE"):
            s3_deadline()
    arrow = "\x1b[31m\u21b3\x1b[0m"  # how the Delta engine prints each cause of an error
    engine = OSError(
        f"Generic S3 error\n  {arrow} Error performing PUT http://h/k in 5ms - HTTP error\n"
        f"    {arrow} error sending request\n      {arrow} Connection reset by peer (os error 104)"
    )
    assert describe(engine) == "Connection reset by peer (os error 104)"
    assert is_transient(engine)
    assert not is_transient(OSError(28, "No space left on device"))
    assert not is_transient(OSError("Generic S3 error: Forbidden (403)"))


@pytest.mark.parametrize("case", ["landed", "another-writer-landed", "nothing-landed-twice"])
def test_an_unclear_commit_is_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """The Delta write raises a network error. Whether it reports success is decided by what commit V+1 holds:
    ours (the reply was lost) is success; another writer's is a lost race; none means try the same commit again."""
    import pyarrow as pa

    from model_ops.location import Location
    from model_ops.registry import eventlog

    schema = pa.schema([pa.field("writer", pa.string())])
    mine = eventlog.DeltaCas(Location(str(tmp_path / "t")), schema, "t")
    other = eventlog.DeltaCas(Location(str(tmp_path / "t")), schema, "t")
    assert mine.version == 0 and other.version == 0
    real_write = eventlog.write_deltalake
    calls: list[int] = []

    def flaky_write(table, data, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        reset = OSError("Generic S3 error: error sending request: Connection reset by peer (os error 104)")
        if case == "landed" and len(calls) == 1:
            real_write(table, data, **kwargs)
            raise reset  # the commit is in place; its reply is lost
        if case == "another-writer-landed" and len(calls) == 1:
            monkeypatch.setattr(eventlog, "write_deltalake", real_write)
            assert other.try_append(pa.table({"writer": ["other"]}, schema=schema))
            raise reset
        if case == "nothing-landed-twice" and len(calls) <= 2:
            raise reset
        return real_write(table, data, **kwargs)

    monkeypatch.setattr(eventlog, "write_deltalake", flaky_write)
    done = mine.try_append(pa.table({"writer": ["mine"]}, schema=schema))
    rows = sorted(eventlog.DeltaCas(Location(str(tmp_path / "t")), schema, "t").read().column("writer").to_pylist())
    if case == "another-writer-landed":
        assert not done and rows == ["other"]
    else:
        assert done and rows == ["mine"], rows  # success, and exactly one copy
        assert mine.version == 1 and mine.table.version() == 1
    assert len(calls) == {"landed": 1, "another-writer-landed": 1, "nothing-landed-twice": 3}[case]


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.parametrize("trigger", [BLOB_PUT, COMMIT_PUT, LOG_PROBE], ids=["blob-upload", "commit", "log-probe"])
def test_register_rides_out_a_3_second_outage(
    proxy: FaultProxy, s3_root: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], trigger: dict[str, str]
) -> None:
    """The endpoint stops answering (connections refused, open ones cut) for 3 s, starting at the request that
    ``trigger`` names; the register waits it out and succeeds, once."""
    assert _cli(capsys, s3_root, "register", MODEL, str(_model_file(tmp_path, "first")))[0] == 0
    proxy.set_rules([{**trigger, "action": "outage", "seconds": 3, "times": 1}])
    code, out, err = _cli(capsys, s3_root, "register", MODEL, str(_model_file(tmp_path, "second")))
    assert proxy.applied() == 1, "the outage never started"
    assert code == 0, err
    assert "Traceback" not in err
    proxy.clear()
    assert [v for v, _ in _versions(s3_root)] == [1, 2]
    assert _cli(capsys, s3_root, "fsck")[0] == 0


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.parametrize(
    ("action", "where"),
    [("reset", {}), ("500", {}), ("reset", COMMIT_PUT), ("503", COMMIT_PUT), ("500", BLOB_PUT)],
    ids=["resets", "500s", "commit-resets", "commit-503s", "blob-500s"],
)
def test_resets_and_server_errors_are_retried(
    proxy: FaultProxy,
    s3_root: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    action: str,
    where: dict[str, str],
) -> None:
    """For 3 s every request (or every one of a kind) is reset or answered 500/503; the register still succeeds."""
    assert _cli(capsys, s3_root, "register", MODEL, str(_model_file(tmp_path, "first")))[0] == 0
    proxy.set_rules([{**where, "action": action, "for_seconds": 3}])
    code, out, err = _cli(capsys, s3_root, "register", MODEL, str(_model_file(tmp_path, "second")))
    assert proxy.applied() >= 2, proxy.stats()["rules"]
    assert code == 0, err
    proxy.clear()
    assert [v for v, _ in _versions(s3_root)] == [1, 2]


@pytest.mark.slow
@pytest.mark.s3
def test_a_store_that_ignores_conditional_writes_is_refused(
    proxy: FaultProxy, s3_root: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], direct: Any
) -> None:
    """A store that ignores ``If-None-Match`` would let two writers overwrite each other's commits: the first write
    of a process to such a store stops with exit 2 and says why, before any commit, and the registry is as it was.
    The same store honouring the header again is written to as usual."""
    from model_ops import location

    assert _cli(capsys, s3_root, "register", MODEL, str(_model_file(tmp_path, "first")))[0] == 0
    location._CONDITIONAL_WRITES_SEEN.clear()  # as a new process would
    proxy.set_rules([{"method": "PUT", "action": "ignore_conditions"}])
    code, out, err = _cli(capsys, s3_root, "register", MODEL, str(_model_file(tmp_path, "second")))
    assert code == 2, err
    assert "does not support conditional writes" in err and "ignoring If-None-Match" in err, err
    assert "Traceback" not in err
    proxy.clear()
    assert [v for v, _ in _versions(s3_root)] == [1]
    assert _cli(capsys, s3_root, "register", MODEL, str(_model_file(tmp_path, "second")))[0] == 0
    assert [v for v, _ in _versions(s3_root)] == [1, 2]
    assert _cli(capsys, s3_root, "fsck")[0] == 0


@pytest.mark.slow
@pytest.mark.s3
def test_a_commit_whose_reply_was_lost_is_reported_as_done_once(
    proxy: FaultProxy, s3_root: str, tmp_path: Path
) -> None:
    """Every commit lands and then its reply is lost: the connection is reset (the engine reports an error) or
    closed (the engine sends the put-if-absent again and hears that the version exists). Each call must report
    success, and each write must be in the log exactly once."""
    from model_ops.registry import Registry

    reg = Registry.open(s3_root, actor="alice")
    first = reg.register(MODEL, _model_file(tmp_path, "v1"))
    proxy.set_rules([{**COMMIT_PUT, "actions": ["lose_reply", "lose_reply_clean"], "once_per_target": True}])
    registered = [reg.register(MODEL, _model_file(tmp_path, f"v{i}")) for i in (2, 3)]
    recorded = [reg.record(MODEL, "note", version=1, reason=f"note {i}") for i in range(6)]
    assert proxy.applied() == 8, proxy.stats()["rules"]
    proxy.clear()

    assert [mv.version for mv in [first, *registered]] == [1, 2, 3]
    other = Registry.open(s3_root)
    assert [(mv.version, mv.digest) for mv in other.versions(MODEL)] == [
        (mv.version, mv.digest) for mv in [first, *registered]
    ]
    events = other.audit()
    check_audit(events)
    notes = [e for e in events if e.kind == "note"]
    assert [e.reason for e in notes] == [f"note {i}" for i in range(6)], "a note is missing or was written twice"
    assert [e.seq for e in notes] == [e.seq for e in recorded]
    assert [e.kind for e in events].count("registered") == 3
    check_invariants(other)


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.parametrize("trigger", [BLOB_PUT, COMMIT_PUT, LOG_READ], ids=["blob-upload", "commit", "log-read"])
def test_an_outage_past_the_deadline_is_one_line_and_exit_1(
    proxy: FaultProxy,
    s3_root: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    trigger: dict[str, str],
) -> None:
    assert _cli(capsys, s3_root, "register", MODEL, str(_model_file(tmp_path, "first")))[0] == 0
    monkeypatch.setenv("MODEL_OPS_S3_DEADLINE", "2")
    proxy.set_rules([{**trigger, "action": "outage", "seconds": 600, "times": 1}])
    code, out, err = _cli(capsys, s3_root, "register", MODEL, str(_model_file(tmp_path, "second")))
    assert proxy.applied() == 1
    assert code == 1
    assert "Traceback" not in err and "a bug" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(f"error: cannot reach the S3 endpoint {proxy.endpoint} after 2 s: "), err
    assert lines[1].startswith("  hint: check that "), err

    proxy.outage(0)  # the endpoint is back: nothing half-written is visible, and the same command now works
    monkeypatch.delenv("MODEL_OPS_S3_DEADLINE")
    assert [v for v, _ in _versions(s3_root)] in ([1], [1, 2])
    code, out, err = _cli(capsys, s3_root, "register", MODEL, str(_model_file(tmp_path, "second")))
    assert code == 0, err
    assert [v for v, _ in _versions(s3_root)] == [1, 2]
    assert _cli(capsys, s3_root, "fsck")[0] == 0


@pytest.mark.slow
@pytest.mark.s3
def test_fsck_and_fetch_over_a_flaky_link(
    proxy: FaultProxy, s3_root: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], direct: Any
) -> None:
    """Half the blob downloads are cut off mid-body. fsck still gives the right answer every time (clean, then the
    one damaged blob), and a fetch still returns exactly the stored bytes."""
    from model_ops.location import resolve_root
    from model_ops.registry import Registry

    reg = Registry.open(s3_root)
    data = {i: unique_bytes(f"flaky-{i}", 300_000 + i) for i in range(3)}
    versions = [reg.register(f"model-{i}", write_file(tmp_path / str(i), "weights.bin", data[i])) for i in data]
    proxy.set_rules([{**BLOB_GET, "action": "cut_body", "prob": 0.5}])
    for _ in range(5):
        code, out, err = _cli(capsys, s3_root, "fsck")
        assert (code, out.strip()) == (0, "registry and artifacts are consistent"), err
    got = reg.fetch(versions[1].ref, tmp_path / "out" / "weights.bin")
    assert got.read_bytes() == data[1]
    assert proxy.applied() >= 3, proxy.stats()["rules"]

    # Damage one stored file behind the store's back: fsck over the same link names it, and only it.
    (entry,) = reg.artifacts.manifest(versions[2].digest).files
    key = resolve_root(s3_root).key("artifacts", "sha256", entry.sha256[:2], entry.sha256[2:])
    body = bytearray(direct.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read())
    body[len(body) // 3] ^= 0x01
    direct.put_object(Bucket=S3_BUCKET, Key=key, Body=bytes(body))
    for _ in range(3):
        code, out, err = _cli(capsys, s3_root, "fsck", "--json")
        assert code == 1, err
        problems = json.loads(out)["problems"]
        assert len(problems) == 1 and problems[0].startswith("model-2 v1:") and entry.sha256 in problems[0], problems


@pytest.mark.slow
@pytest.mark.s3
def test_a_failed_multipart_upload_is_aborted(
    proxy: FaultProxy, s3_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: Any
) -> None:
    """A part is refused; the abort that follows meets six server errors in a row before S3 takes it. The upload
    must end aborted, not pending with its parts stored and billed."""
    from botocore.exceptions import ClientError

    from model_ops.artifacts.blobstore import S3BlobStore
    from model_ops.registry import Registry

    part = 5 << 20  # the smallest part S3 accepts
    monkeypatch.setattr(S3BlobStore, "PART_SIZE", part)
    monkeypatch.setenv("MODEL_OPS_S3_DEADLINE", "20")
    reg = Registry.open(s3_root)
    big = write_file(tmp_path / "in", "weights.bin", os.urandom(2 * part + 1000))
    proxy.set_rules(
        [
            {"method": "PUT", "path": r"partNumber=2", "action": "403"},
            {"method": "DELETE", "path": r"uploadId=", "action": "500", "times": 6},
        ]
    )
    with pytest.raises(ClientError, match="AccessDenied"):
        reg.register("big", big)
    rules = proxy.stats()["rules"]
    assert rules[0].get("applied", 0) >= 1 and rules[1].get("applied", 0) == 6, rules
    proxy.clear()
    assert _pending_uploads(direct, s3_root) == []
    assert reg.register("big", big).version == 1  # and the next attempt stores it whole
    assert _pending_uploads(direct, s3_root) == []


@pytest.mark.slow
@pytest.mark.s3
def test_gc_aborts_an_abandoned_multipart_upload(proxy: FaultProxy, s3_root: str, direct: Any) -> None:
    """A killed writer leaves an upload with a part stored: gc counts it (dry run) and aborts it (--apply). (moto
    reports one fixed initiation date for every upload, so the grace period itself is not exercised here.)"""
    from model_ops.location import resolve_root
    from model_ops.registry import Registry

    reg = Registry.open(s3_root)
    key = resolve_root(s3_root).key("artifacts", "sha256", "ab", "c" * 62)
    upload_id = direct.create_multipart_upload(Bucket=S3_BUCKET, Key=key)["UploadId"]
    direct.upload_part(Bucket=S3_BUCKET, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * 1024)

    dry = reg.gc(grace=timedelta(0))
    assert dry["multipart_uploads"] == 1 and dry["temporaries"] == 0
    assert [u["UploadId"] for u in _pending_uploads(direct, s3_root)] == [upload_id]
    done = reg.gc(apply=True, grace=timedelta(0))
    assert done["multipart_uploads"] == 1
    assert _pending_uploads(direct, s3_root) == []
    assert reg.gc(apply=True, grace=timedelta(0))["multipart_uploads"] == 0
