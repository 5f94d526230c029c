"""Event webhooks: signed, ordered per model, at least once, and never in the way of a registry write.

Receivers are ``http.server`` instances on loopback that check every signature and record every request (accepted
or not), so a test can ask both "what did the receiver accept" and "what was attempted".
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from model_ops import cli
from model_ops.errors import UsageError
from model_ops.location import Location, s3_client
from model_ops.registry import Registry, webhooks
from model_ops.registry import events as ev
from model_ops_tests.helpers import free_port, unique_bytes, write_file

SECRET = "model-ops-test-secret"
SECRET_ENV = "MODEL_OPS_TEST_WEBHOOK_SECRET"
WAIT = 60.0  # generous bound for background work; never a timing assertion


class Receiver:
    """A loopback webhook receiver. ``respond(doc, headers)`` decides the status of each request (it may block);
    every request is recorded with whether its signature verified."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.respond: Callable[[dict, Any], int] = lambda doc, headers: 200
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                doc = json.loads(body)
                record = {
                    "doc": doc,
                    "seq": doc["event"]["seq"],
                    "model": doc["event"]["model"],
                    "kind": doc["event"]["kind"],
                    "delivery_id": self.headers[webhooks.DELIVERY_HEADER],
                    "attempt": int(self.headers[webhooks.ATTEMPT_HEADER]),
                    "timestamp": self.headers[webhooks.TIMESTAMP_HEADER],
                    "signed": webhooks.verify_signature(
                        SECRET, body, self.headers[webhooks.TIMESTAMP_HEADER], self.headers[webhooks.SIGNATURE_HEADER]
                    ),
                    "status": None,
                }
                with receiver.lock:
                    receiver.requests.append(record)
                status = receiver.respond(doc, self.headers)
                record["status"] = status
                try:
                    self.send_response(status)
                    if 300 <= status < 400:
                        self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"no" if status >= 300 else b"ok")
                except OSError:
                    pass  # the dispatcher gave up waiting (a timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hooks/model-ops"

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["status"] is not None and 200 <= r["status"] < 300]

    def all(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.requests)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _webhook_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def no_background(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes do not start deliveries: the test drives them with Dispatcher.deliver."""
    monkeypatch.setattr(webhooks, "after_commit", lambda registry: None)


def hook(url: str, name: str = "ops", **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "secret_env": SECRET_ENV, "backoff": 0.01, "max_backoff": 0.05, **extra}


def configure(root: Path, *hooks: dict[str, Any]) -> Path:
    path = root / "registry" / webhooks.CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"webhooks": list(hooks)}))
    return path


def dispatcher(reg: Registry) -> webhooks.Dispatcher:
    return webhooks.Dispatcher.for_registry(reg)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def selected(reg: Registry, kinds: tuple[str, ...] = webhooks.DEFAULT_KINDS) -> list[ev.Event]:
    return [e for e in reg.audit() if e.kind in kinds]


def assert_in_order_per_model(requests: list[dict[str, Any]]) -> None:
    """The first time each event reached the receiver, every earlier event of its model had already reached it
    (redeliveries, which carry the same delivery id, may come later)."""
    firsts: dict[str, list[int]] = {}
    done: set[int] = set()
    for r in requests:
        if r["seq"] not in done:
            done.add(r["seq"])
            firsts.setdefault(r["model"], []).append(r["seq"])
    for model, seqs in firsts.items():
        assert seqs == sorted(seqs), f"{model}: first deliveries out of order: {seqs}"


def register(reg: Registry, tmp: Path, name: str, tag: str) -> int:
    return reg.register(name, write_file(tmp, f"{tag}.bin", unique_bytes(tag))).version


# ---------------------------------------------------------------------------------------------------- delivery


def test_every_kind_of_event_is_delivered_signed_and_in_order_after_the_write(
    reg: Registry, root: Path, tmp_path: Path, receiver: Receiver
) -> None:
    configure(root, hook(receiver.url))
    register(reg, tmp_path, "m", "v1")
    reg.transition("m/1", "staging", reason="candidate")
    reg.set_alias("m", "challenger", 1, reason="try it")
    reg.remove_alias("m", "challenger", reason="done")
    reg.record("m", "evaluation", version=1, details={"passed": True})
    reg.transition("m/1", "production", reason="gates passed")
    reg.record("m", "deployment", version=1, details={"target": "prod"})
    register(reg, tmp_path, "m", "v2")
    reg.transition("m/2", "staging", reason="candidate")
    reg.transition("m/2", "production", reason="better")
    reg.rollback("m", reason="regression")
    reg.record("m", "alert", details={"metric": "roc_auc"})
    reg.set_tag("m/1", "owner", "ann")  # not in the default kinds
    reg.record("m", "note", reason="not in the default kinds either")
    workers = [t for t in threading.enumerate() if t.name.endswith(f" of {reg.location.uri}")]
    assert len(workers) <= 2, "background delivery is one thread per registry plus one per webhook"
    assert webhooks.flush(WAIT)

    expected = selected(reg)
    assert {e.kind for e in expected} >= {
        ev.REGISTERED,
        ev.STAGE_CHANGED,
        ev.ALIAS_SET,
        ev.ALIAS_REMOVED,
        ev.ROLLBACK,
        "deployment",
        "evaluation",
        "alert",
    }
    got = receiver.accepted()
    assert [r["seq"] for r in got] == [e.seq for e in expected]
    assert all(r["signed"] for r in receiver.all())
    for r, e in zip(got, expected):
        assert r["doc"]["event"] == json.loads(json.dumps(e.to_dict(), default=str))
        assert r["doc"]["delivery_id"] == r["delivery_id"] == webhooks.delivery_id("ops", e)
        assert r["doc"]["webhook"] == "ops" and r["doc"]["registry"] == str(reg.root)
        assert abs(int(r["timestamp"]) - time.time()) < 600
    state = json.loads((root / "registry" / "webhooks" / "ops.json").read_text())
    assert state["cursor"] == reg.audit()[-1].seq  # past the unselected tag and note too
    assert [r.pending for r in dispatcher(reg).status()] == [0]


def test_a_receiver_verifies_the_signature_over_timestamp_and_raw_body() -> None:
    body = b'{"event":{"seq":1}}'
    now = 1_800_000_000
    ts = str(now)
    signature = webhooks.sign(SECRET, ts, body)
    assert signature.startswith("sha256=") and len(signature) == len("sha256=") + 64
    assert webhooks.verify_signature(SECRET, body, ts, signature, now=now + 10)
    assert not webhooks.verify_signature(SECRET, body + b" ", ts, signature, now=now)  # body changed
    assert not webhooks.verify_signature("other secret", body, ts, signature, now=now)
    assert not webhooks.verify_signature(SECRET, body, str(now + 1), signature, now=now)  # timestamp changed
    assert not webhooks.verify_signature(SECRET, body, ts, signature, now=now + 301)  # a replay, later
    assert not webhooks.verify_signature(SECRET, body, None, signature, now=now)
    assert not webhooks.verify_signature(SECRET, body, "soon", signature, now=now)


def test_a_failing_receiver_gets_every_event_once_it_recovers_with_the_same_delivery_ids(
    reg: Registry, root: Path, receiver: Receiver, no_background: None
) -> None:
    configure(root, hook(receiver.url))
    failures = iter(range(7))
    receiver.respond = lambda doc, headers: 500 if next(failures, None) is not None else 200
    for i, model in enumerate(["a", "b", "a", "b", "a"]):
        reg.record(model, "alert", details={"i": i})

    reports = dispatcher(reg).deliver(wait=WAIT)
    assert [r.pending for r in reports] == [0]

    expected = [e.seq for e in selected(reg)]
    got = receiver.accepted()
    assert sorted({r["seq"] for r in got}) == expected  # all delivered, each at least once
    assert_in_order_per_model(receiver.all())
    attempts = [r for r in receiver.all() if r["status"] == 500]
    assert len(attempts) == 7
    ids: dict[int, set[str]] = {}
    for r in receiver.all():
        ids.setdefault(r["seq"], set()).add(r["delivery_id"])
    assert all(len(v) == 1 for v in ids.values()), "a redelivery carries the first attempt's delivery id"
    first = [r for r in receiver.all() if r["seq"] == expected[0]]
    assert [r["attempt"] for r in first] == list(range(1, len(first) + 1))


def test_one_models_refused_events_do_not_hold_back_the_other_models(
    reg: Registry, root: Path, receiver: Receiver, no_background: None
) -> None:
    configure(root, hook(receiver.url))
    refuse_a = threading.Event()
    refuse_a.set()
    receiver.respond = lambda doc, headers: 500 if refuse_a.is_set() and doc["event"]["model"] == "a" else 200
    for model in ["a", "b", "a", "b"]:
        reg.record(model, "alert")
    a1, b2, a3, b4 = (e.seq for e in selected(reg))

    [report] = dispatcher(reg).deliver(wait=0)
    assert [r["seq"] for r in receiver.accepted()] == [b2, b4]
    assert report.pending == 2 and report.cursor == a1 - 1
    assert report.blocked["a"]["seq"] == a1 and "HTTP 500" in report.blocked["a"]["error"]
    assert {r["seq"] for r in receiver.all()} == {a1, b2, b4}, "a3 waits behind a1"

    [status] = dispatcher(reg).status()
    assert status.pending == 2 and status.blocked["a"]["seq"] == a1

    refuse_a.clear()
    [report] = dispatcher(reg).deliver(wait=WAIT)
    assert report.pending == 0 and report.cursor == b4 and not report.blocked
    accepted = [r["seq"] for r in receiver.accepted()]
    assert accepted == [b2, b4, a1, a3]  # b's events were not sent again
    assert_in_order_per_model(receiver.all())


def test_connection_refused_leaves_events_pending_until_the_receiver_is_back(
    reg: Registry, root: Path, receiver: Receiver, no_background: None
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/gone"
    configure(root, hook(dead))
    reg.record("a", "alert")
    reg.record("b", "alert")

    [report] = dispatcher(reg).deliver(wait=0)
    assert report.pending == 2 and report.delivered == 0
    assert "could not reach" in report.last_error["error"]
    assert report.retry_in is not None
    state = json.loads((root / "registry" / "webhooks" / "ops.json").read_text())
    assert state["retry_after"] is not None and list(state["blocked"]) == ["a"]

    configure(root, hook(receiver.url))  # the same webhook, now pointing at a live receiver
    [report] = dispatcher(reg).deliver(wait=WAIT)
    assert report.pending == 0 and report.delivered == 2
    assert [r["seq"] for r in receiver.accepted()] == [e.seq for e in selected(reg)]


def test_a_timed_out_delivery_is_sent_again_with_the_same_delivery_id(
    reg: Registry, root: Path, receiver: Receiver, no_background: None
) -> None:
    configure(root, hook(receiver.url, timeout=0.3, max_attempts=1))
    slow = threading.Event()
    slow.set()

    def respond(doc: dict, headers: Any) -> int:
        if slow.is_set():
            receiver.release.wait(3)  # far past the timeout: the dispatcher gives up and keeps the event pending
        return 200

    receiver.respond = respond
    reg.record("a", "alert")
    [report] = dispatcher(reg).deliver(wait=0)
    assert report.pending == 1
    assert "timed out" in report.last_error["error"]

    slow.clear()
    [report] = dispatcher(reg).deliver(wait=WAIT)
    assert report.pending == 0
    ids = {r["delivery_id"] for r in receiver.all()}
    assert len(receiver.all()) == 2 and len(ids) == 1


def test_a_redirect_is_not_followed_and_counts_as_a_failure(
    reg: Registry, root: Path, receiver: Receiver, no_background: None
) -> None:
    configure(root, hook(receiver.url, max_attempts=1))
    receiver.respond = lambda doc, headers: 302
    reg.record("a", "alert")
    [report] = dispatcher(reg).deliver(wait=0)
    assert report.pending == 1 and "HTTP 302" in report.last_error["error"]
    assert len(receiver.all()) == 1


def test_a_hanging_receiver_never_holds_up_registry_writes(reg: Registry, root: Path, receiver: Receiver) -> None:
    configure(root, hook(receiver.url, timeout=120))
    in_flight = threading.Event()

    def respond(doc: dict, headers: Any) -> int:
        in_flight.set()
        receiver.release.wait(120)
        return 200

    receiver.respond = respond
    reg.record("a", "alert", details={"n": 0})
    wait_until(in_flight.is_set, "the background delivery to reach the receiver")
    for n in range(1, 4):  # each returns while the first delivery is still hanging
        reg.record("a", "alert", details={"n": n})
        reg.record("b", "alert", details={"n": n})
    assert not receiver.release.is_set() and len(receiver.all()) == 1
    assert len(reg.audit()) == 7

    receiver.release.set()
    wait_until(lambda: len({r["seq"] for r in receiver.accepted()}) == 7, "every event to be delivered")
    assert webhooks.flush(WAIT)
    assert_in_order_per_model(receiver.all())


def test_a_long_lived_process_retries_blocked_events_without_further_writes(
    reg: Registry, root: Path, receiver: Receiver
) -> None:
    configure(root, hook(receiver.url, max_attempts=1, backoff=0.05, max_backoff=0.2))
    failures = iter(range(3))
    receiver.respond = lambda doc, headers: 503 if next(failures, None) is not None else 200
    reg.record("a", "alert")
    wait_until(lambda: len(receiver.accepted()) == 1, "the backoff timer to deliver the event")
    assert [r["status"] for r in receiver.all()] == [503, 503, 503, 200]


def test_the_events_filter_selects_kinds_and_model_globs(
    reg: Registry, root: Path, receiver: Receiver, no_background: None
) -> None:
    configure(
        root,
        hook(receiver.url + "?only", name="fraud-alerts", events={"kinds": ["alert"], "models": ["fraud_*"]}),
        hook(receiver.url + "?all", name="everything", events={"kinds": ["*"]}),
    )
    reg.record("fraud_cards", "alert")
    reg.record("churn", "alert")
    reg.record("fraud_cards", "note")
    reg.record("fraud_wire", "deployment")
    reg.record("fraud_wire", "alert")
    events = reg.audit()

    reports = dispatcher(reg).deliver(wait=WAIT)
    assert [(r.webhook, r.pending, r.cursor) for r in reports] == [
        ("fraud-alerts", 0, events[-1].seq),
        ("everything", 0, events[-1].seq),
    ]
    by_hook: dict[str, list[tuple[str, str]]] = {}
    for r in receiver.accepted():
        by_hook.setdefault(r["doc"]["webhook"], []).append((r["model"], r["kind"]))
    assert by_hook["fraud-alerts"] == [("fraud_cards", "alert"), ("fraud_wire", "alert")]
    assert by_hook["everything"] == [(e.model, e.kind) for e in events]


def test_a_new_webhook_starts_at_its_configuration_unless_it_replays_history(
    reg: Registry, root: Path, receiver: Receiver, no_background: None
) -> None:
    reg.record("a", "alert", reason="before the webhook existed")
    reg.record("a", "alert", reason="also before")
    before = reg.audit()[-1]
    path = configure(root, hook(receiver.url, name="fresh"), hook(receiver.url, name="replay", replay_history=True))
    configured = before.ts.timestamp() + 0.001
    os.utime(path, (configured, configured))
    time.sleep(0.05)  # the next commit's timestamp is after the configuration's
    reg.record("a", "alert", reason="after")

    dispatcher(reg).deliver(wait=WAIT)
    got: dict[str, list[str]] = {}
    for r in receiver.accepted():
        got.setdefault(r["doc"]["webhook"], []).append(r["doc"]["event"]["reason"])
    assert got == {"fresh": ["after"], "replay": ["before the webhook existed", "also before", "after"]}


def test_without_the_secret_nothing_is_sent_and_the_events_wait(
    reg: Registry, root: Path, receiver: Receiver, no_background: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(root, hook(receiver.url))
    monkeypatch.delenv(SECRET_ENV)
    reg.record("a", "alert")
    [report] = dispatcher(reg).deliver(wait=0)
    assert report.pending == 1 and SECRET_ENV in report.last_error["error"]
    assert receiver.all() == []

    monkeypatch.setenv(SECRET_ENV, SECRET)
    [report] = dispatcher(reg).deliver(wait=WAIT)
    assert report.pending == 0 and len(receiver.accepted()) == 1


# ---------------------------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (yaml.safe_dump({"webhooks": [{"name": "ops", "url": "ftp://x/y", "secret_env": "S"}]}), "webhooks[0].url"),
        (yaml.safe_dump({"webhooks": [{"name": "ops", "url": "http://x"}]}), "webhooks[0].secret_env"),
        (
            yaml.safe_dump({"webhooks": [{"name": "ops", "url": "http://x", "secret_env": "my secret!"}]}),
            "webhooks[0].secret_env",
        ),
        (yaml.safe_dump({"webhooks": [{"name": "Ops Hook", "url": "http://x", "secret_env": "S"}]}), "name"),
        (
            yaml.safe_dump(
                {
                    "webhooks": [
                        {"name": "ops", "url": "http://x", "secret_env": "S", "events": {"kinds": ["regstered"]}}
                    ]
                }
            ),
            "webhooks[0].events.kinds",
        ),
        (
            yaml.safe_dump({"webhooks": [{"name": "ops", "url": "http://x", "secret_env": "S", "timeout": -1}]}),
            "webhooks[0].timeout",
        ),
        (
            yaml.safe_dump({"webhooks": [{"name": "ops", "url": "http://x", "secret_env": "S", "max_attempts": 0}]}),
            "webhooks[0].max_attempts",
        ),
        (
            yaml.safe_dump({"webhooks": [{"name": "ops", "url": "http://x", "secret_env": "S", "retries": 3}]}),
            "webhooks[0].retries",
        ),
        (
            yaml.safe_dump(
                {"webhooks": [{"name": "ops", "url": "http://x", "secret_env": "S", "backoff": 10, "max_backoff": 1}]}
            ),
            "max_backoff",
        ),
        (
            yaml.safe_dump(
                {
                    "webhooks": [
                        {"name": "ops", "url": "http://x", "secret_env": "S"},
                        {"name": "ops", "url": "http://y", "secret_env": "S"},
                    ]
                }
            ),
            "webhooks[1].name",
        ),
        ("- just\n- a list\n", "mapping"),
        ("webhooks: [\n", "not valid YAML"),
    ],
)
def test_a_bad_webhooks_yaml_is_a_usage_error_naming_the_field(root: Path, text: str, expected: str) -> None:
    path = root / "registry" / webhooks.CONFIG_NAME
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        webhooks.load_config(Location(str(root / "registry")))
    assert expected in str(err.value) and str(path) in str(err.value)


def test_a_bad_webhooks_yaml_does_not_fail_the_write_but_fails_the_command(
    reg: Registry, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = root / "registry" / webhooks.CONFIG_NAME
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump({"webhooks": [{"name": "ops", "url": "gopher://x", "secret_env": "S"}]}))
    reg.record("a", "alert")  # the background pass finds the mistake and logs it; the write is unaffected
    assert webhooks.flush(WAIT)
    assert [e.kind for e in reg.audit()] == ["alert"]
    assert cli.main(["--root", str(root), "webhooks", "status"]) == 2
    assert "webhooks[0].url" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- command line


def test_cli_deliver_and_status(
    reg: Registry, root: Path, receiver: Receiver, no_background: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--root", str(root), "webhooks", "status"]) == 0
    assert "no webhooks configured" in capsys.readouterr().out

    configure(root, hook(receiver.url, max_attempts=1))
    receiver.respond = lambda doc, headers: 500
    reg.record("a", "alert")
    reg.record("a", "alert")
    assert cli.main(["--root", str(root), "webhooks", "deliver", "--wait", "0"]) == 1
    out = capsys.readouterr().out
    assert "pending 2" in out and "blocked: a at event 1" in out and "HTTP 500" in out

    assert cli.main(["--root", str(root), "webhooks", "status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    [status] = doc["webhooks"]
    assert status["webhook"] == "ops" and status["pending"] == 2 and status["blocked"]["a"]["seq"] == 1

    receiver.respond = lambda doc, headers: 200
    assert cli.main(["--root", str(root), "webhooks", "deliver", "ops", "--wait", "30", "--json"]) == 0
    [report] = json.loads(capsys.readouterr().out)["webhooks"]
    assert report["pending"] == 0 and report["delivered"] == 2
    assert [r["seq"] for r in receiver.accepted()] == [1, 2]

    assert cli.main(["--root", str(root), "webhooks", "deliver", "nosuch"]) == 1
    assert "no webhook named 'nosuch'" in capsys.readouterr().err
    assert cli.main(["--root", str(root), "webhooks", "deliver", "--wait", "-1"]) == 2


def test_the_cli_gives_background_deliveries_a_bounded_moment_before_it_exits(
    reg: Registry, root: Path, tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(root, hook(receiver.url, events={"kinds": ["*"]}))
    register(reg, tmp_path, "m", "v1")
    assert webhooks.flush(WAIT)
    flushed: list[float] = []
    real_flush = webhooks.flush
    monkeypatch.setattr(webhooks, "flush", lambda timeout: flushed.append(timeout) or real_flush(timeout))

    def leave(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", leave)
    monkeypatch.setattr(sys, "argv", ["model-ops", "--root", str(root), "tag", "m/1", "owner", "ann"])
    with pytest.raises(SystemExit) as exited:
        cli.entry()
    assert exited.value.code == 0
    assert flushed and 0 < flushed[0] <= 2.0
    assert real_flush(WAIT)
    assert [r["kind"] for r in receiver.accepted()] == [ev.REGISTERED, ev.TAG_SET]


@pytest.mark.slow
def test_a_cli_write_exits_while_the_receiver_hangs_and_the_event_stays_pending(
    root: Path, tmp_path: Path, receiver: Receiver
) -> None:
    configure(root, hook(receiver.url, timeout=120, events={"kinds": ["*"]}))
    receiver.respond = lambda doc, headers: 200 if receiver.release.wait(120) else 500
    model = write_file(tmp_path, "model.bin", unique_bytes("cli"))
    env = {**os.environ, SECRET_ENV: SECRET}
    done = subprocess.run(
        [sys.executable, "-m", "model_ops.cli", "--root", str(root), "register", "m", str(model)],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr
    assert not receiver.release.is_set()  # the receiver never answered, and the command is done
    receiver.release.set()
    reg = Registry.open(root)
    [report] = dispatcher(reg).deliver(wait=WAIT)
    assert report.pending == 0
    assert {r["kind"] for r in receiver.accepted()} == {ev.REGISTERED}


# ---------------------------------------------------------------------------------------------------- concurrency


def test_saving_merges_progress_so_a_slower_dispatcher_cannot_move_the_cursor_back(root: Path) -> None:
    registry = Location(str(root / "registry"))
    slow, fast = webhooks._StateStore(registry, "ops"), webhooks._StateStore(registry, "ops")
    slow.load(), fast.load()
    fast.save(webhooks.DeliveryState(cursor=10, ahead={"b": 12}))
    slow.save(webhooks.DeliveryState(cursor=5, ahead={"a": 7, "b": 9}))  # read before fast saved
    stored = webhooks._StateStore(registry, "ops").load()
    assert stored is not None
    assert stored.cursor == 10 and stored.ahead == {"b": 12}
    leftovers = list((root / "registry" / "webhooks").glob("*.tmp"))
    assert leftovers == []


def _alerts_in_parallel(root: str, models: list[str], count: int) -> None:
    reg = Registry.open(root, actor="writer")
    for i in range(count):
        reg.record(models[i % len(models)], "alert", details={"i": i})


@pytest.mark.slow
def test_concurrent_dispatchers_never_skip_an_event_or_corrupt_the_cursor(
    root: Path, receiver: Receiver, tmp_path: Path
) -> None:
    """Writers in this process (each write kicks a background pass) and `model-ops webhooks deliver` processes
    all dispatch the same webhook at once; a flaky receiver makes them retry. Every event must arrive, the first
    delivery of each in order per model, and the cursor must end at the last event."""
    configure(root, hook(receiver.url, max_attempts=2))
    flaky = itertools.count()
    receiver.respond = lambda doc, headers: 500 if next(flaky) % 7 == 3 else 200
    Registry.open(root).record("warmup", "alert")
    env = {**os.environ, SECRET_ENV: SECRET}
    dispatchers = [
        subprocess.Popen(
            [sys.executable, "-m", "model_ops.cli", "--root", str(root), "webhooks", "deliver", "--wait", "5"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    writers = [threading.Thread(target=_alerts_in_parallel, args=(str(root), ["a", "b", "c"], 15)) for _ in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    for p in dispatchers:
        _, err = p.communicate(timeout=300)
        assert p.returncode in (0, 1), err
    reg = Registry.open(root)
    assert webhooks.flush(WAIT)
    [report] = dispatcher(reg).deliver(wait=WAIT)

    expected = [e.seq for e in selected(reg)]
    assert len(expected) == 31
    assert report.pending == 0 and report.cursor == expected[-1]
    assert sorted({r["seq"] for r in receiver.accepted()}) == expected
    assert_in_order_per_model(receiver.all())
    state = webhooks.DeliveryState.model_validate_json((root / "registry" / "webhooks" / "ops.json").read_bytes())
    assert state.cursor == expected[-1] and not state.blocked


@pytest.mark.s3
@pytest.mark.slow
def test_dispatchers_on_s3_merge_their_progress_by_conditional_writes(s3_root: str, receiver: Receiver) -> None:
    reg = Registry.open(s3_root, actor="tester")
    location = reg.location
    s3_client().put_object(
        Bucket=location.bucket,
        Key=location.key(webhooks.CONFIG_NAME),
        Body=yaml.safe_dump({"webhooks": [hook(receiver.url)]}).encode(),
    )
    slow, fast = webhooks._StateStore(location, "merge"), webhooks._StateStore(location, "merge")
    slow.load(), fast.load()
    fast.save(webhooks.DeliveryState(cursor=10))
    slow.save(webhooks.DeliveryState(cursor=5, ahead={"a": 11}))
    stored = webhooks._StateStore(location, "merge").load()
    assert stored is not None and stored.cursor == 10 and stored.ahead == {"a": 11}

    for model in ["a", "b", "a", "b", "a", "b"]:
        reg.record(model, "alert")
    threads = [threading.Thread(target=lambda: dispatcher(reg).deliver(wait=WAIT)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert webhooks.flush(WAIT)
    expected = [e.seq for e in selected(reg)]
    assert sorted({r["seq"] for r in receiver.accepted()}) == expected
    assert_in_order_per_model(receiver.all())
    [status] = dispatcher(reg).status()
    assert status.pending == 0 and status.cursor == expected[-1]
