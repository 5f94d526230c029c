"""Reliability under faults and attack: counts, not timings.

    python benchmarks/reliability.py [--acks 1000] [--writers 3]

Prints, for the registry on a local root:
- **acknowledged writes lost** under a fault mix: several writer processes register versions and append records at
  once while a killer SIGKILLs one of them at a random moment every 0.1-1 s (mid-commit, between commit and
  receipt, mid-upload) and starts a new one. A write counts as acknowledged when its call returned in the child
  and the child printed it. Afterwards every acknowledged registration must resolve to its digest and every
  acknowledged record must be in the log with its hash. Goal: 0 of at least 1,000.
- **version numbers reused**: a (model, version) acknowledged with two different digests. Goal: 0.
- **damaged logs**: each kind of damage to the newest commit (emptied, stripped of its actions, deleted, cut in
  half) and to a checkpoint, then a write attempt: writes that went through (and so could reuse a number), damage
  fsck missed, and repairs that did not bring back every acknowledged version. Goal: 0, 0, 0.
- **S3 faults ridden out**: registers on an S3 root (moto on loopback behind a fault-injecting proxy) through a 3 s
  outage, 3 s of resets or 5xx answers, or a commit whose reply is lost, within the S3 deadline. Goal: all succeed,
  none duplicated.
- **forged signed versions accepted**: a genuine version's digest and signature copied into other records, tried at
  every place a version is used or checked, with an ECDSA key and an HMAC secret. Goal: 0.
- **forged events accepted**: edits, deletions, reorderings and forged promotions of the events table through the
  Delta API that fsck does not name. Goal: 0.

Exit status 1 when any goal is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def worker(root: str, wid: int) -> None:
    """Write forever, printing each acknowledged write: ``reg MODEL VERSION DIGEST`` or ``rec SEQ HASH``."""
    from model_ops.registry import Registry

    reg = Registry.open(root, actor=f"writer-{wid}")
    work = Path(tempfile.mkdtemp(prefix=f"rel-{wid}-"))
    rng = random.Random(os.getpid())
    i = 0
    while True:
        i += 1
        model = f"m{rng.randrange(3)}"
        if rng.random() < 0.5:
            path = work / f"{i}.bin"
            path.write_bytes(os.urandom(rng.choice([64, 4096, 1 << 20])))
            mv = reg.register(model, path)
            path.unlink()
            print(f"reg {model} {mv.version} {mv.digest}", flush=True)
        else:
            try:
                event = reg.record(model, "note", reason=f"note {i}")
            except Exception as e:  # a model with no versions yet: a record may still name it
                print(f"err {type(e).__name__} {e}", file=sys.stderr, flush=True)
                continue
            print(f"rec {event.seq} {event.hash}", flush=True)


class Writer:
    def __init__(self, root: Path, wid: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(root), str(wid)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            cwd=str(REPO),
        )
        os.set_blocking(self.proc.stdout.fileno(), False)  # type: ignore[union-attr]
        self.buffer = ""
        self.acked = 0  # writes acknowledged since this process started

    def drain(self) -> list[str]:
        try:
            chunk = self.proc.stdout.read()  # type: ignore[union-attr]
        except (BlockingIOError, TypeError):
            chunk = None
        if chunk:
            self.buffer += chunk
        lines = self.buffer.split("\n")
        self.buffer = lines.pop()
        got = [line for line in lines if line]
        self.acked += len(got)
        return got

    def kill(self) -> list[str]:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        got = self.drain()
        return got  # a partial last line was never acknowledged


def fault_mix(root: Path, acks: int, writers: int, seed: int) -> dict:
    from model_ops.registry import Registry

    rng = random.Random(seed)
    pool = [Writer(root, w) for w in range(writers)]
    lines: list[str] = []
    kills = 0
    started = time.monotonic()
    while len(lines) < acks:
        time.sleep(rng.uniform(0.1, 1.0))
        for w in pool:
            lines += w.drain()
        # Only a writer that is writing is worth killing: one still starting up would only delay the run.
        ready = [i for i, w in enumerate(pool) if w.acked]
        if not ready:
            continue
        victim = rng.choice(ready)
        lines += pool[victim].kill()
        kills += 1
        pool[victim] = Writer(root, victim)
    for w in pool:
        lines += w.kill()
    print(f"  ({len(lines)} acknowledged lines collected)", flush=True)
    reg = Registry.open(root)
    registered: dict[tuple[str, int], set[str]] = {}
    records: dict[int, str] = {}
    for line in lines:
        parts = line.split()
        if parts[0] == "reg":
            registered.setdefault((parts[1], int(parts[2])), set()).add(parts[3])
        elif parts[0] == "rec":
            records[int(parts[1])] = parts[2]
    reused = sum(1 for digests in registered.values() if len(digests) > 1)
    lost = 0
    for (model, version), digests in registered.items():
        try:
            if reg.get(model, version).digest not in digests:
                lost += 1
        except Exception:
            lost += 1
    stored = {e.seq: e.hash for e in reg.audit()}
    lost += sum(1 for seq, h in records.items() if stored.get(seq) != h)
    problems = reg.fsck()
    return {
        "acknowledged": len(registered) + len(records),
        "registrations": len(registered),
        "records": len(records),
        "kills": kills,
        "lost": lost,
        "reused": reused,
        "fsck_problems": problems,
        "seconds": round(time.monotonic() - started, 1),
    }


def damaged_logs(work: Path) -> dict:
    from model_ops.errors import IntegrityError
    from model_ops.registry import Registry

    def newest(root: Path) -> Path:
        return sorted((root / "registry" / "events" / "_delta_log").glob("*.json"))[-1]

    def checkpoint(root: Path) -> Path:
        reg = Registry.open(root, actor="t")
        for i in range(101):
            reg.set_tag("models:/m/1", "k", str(i))
        (ck,) = (root / "registry" / "events" / "_delta_log").glob("*.checkpoint.parquet")
        return ck

    def flip(path: Path) -> None:
        data = bytearray(path.read_bytes())
        for i in range(len(data) // 3, len(data) // 3 + 64):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))

    damages = {
        "empty": lambda root: newest(root).write_bytes(b""),
        "no-actions": lambda root: newest(root).write_text('{"commitInfo":{"timestamp":1}}\n'),
        "deleted": lambda root: newest(root).unlink(),
        "half": lambda root: newest(root).write_bytes(newest(root).read_bytes()[:150]),
        "checkpoint": lambda root: flip(checkpoint(root)),
    }
    writes_through = missed = unrepaired = 0
    for name, damage in damages.items():
        root = work / f"dmg-{name}"
        reg = Registry.open(root, actor="t")
        for i in range(3):
            p = work / f"{name}-{i}.bin"
            p.write_bytes(os.urandom(256))
            reg.register("m", p)
        damage(root)
        try:  # what the damaged log still shows (nothing, when the engine cannot read it)
            versions = {v.version: v.digest for v in Registry.open(root).versions("m")}
        except IntegrityError:
            versions = {}
        if not Registry.open(root).fsck():
            missed += 1
        try:
            p = work / f"{name}-x.bin"
            p.write_bytes(os.urandom(256))
            Registry.open(root, actor="t").register("m", p)
            writes_through += 1
        except IntegrityError:
            pass
        Registry.open(root, actor="t").repair(apply=True)
        fresh = Registry.open(root)
        got = {v.version: v.digest for v in fresh.versions("m")}
        if len(got) != 3 or any(got.get(k) != d for k, d in versions.items()) or fresh.fsck():
            unrepaired += 1
    return {"kinds": len(damages), "writes_through": writes_through, "missed": missed, "unrepaired": unrepaired}


def forgeries(work: Path) -> dict:
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    from model_ops.registry import Registry
    from model_ops.registry import events as ev

    def fresh(name: str, gate: bool = False) -> tuple[Path, Registry]:
        root = work / f"forge-{name}"
        if gate:
            (root / "registry").mkdir(parents=True)
            policy = (REPO / "model_ops" / "registry" / "default_policy.yaml").read_text()
            (root / "registry" / "policy.yaml").write_text(policy.replace("    approvals: 0\n", "    approvals: 1\n"))
        reg = Registry.open(root, actor="alice")
        for i in range(3):
            p = work / f"{name}-{i}.bin"
            p.write_bytes(os.urandom(256))
            reg.register("m", p)
        reg.transition("models:/m/1", "staging", reason="ready")
        reg.set_tag("models:/m/2", "owner", "a")
        return root, reg

    def rewrite(root: Path, change) -> None:  # type: ignore[no-untyped-def]
        uri = str(root / "registry" / "events")
        rows = change(DeltaTable(uri).to_pyarrow_table().sort_by("seq").to_pylist())
        write_deltalake(uri, pa.Table.from_pylist(rows, schema=ev.SCHEMA), mode="overwrite")

    def forge(root: Path, reg: Registry, **fields) -> None:  # type: ignore[no-untyped-def]
        tip = reg.audit()[-1]
        e = ev.Event(seq=tip.seq + 1, ts=tip.ts + timedelta(seconds=1), **fields)
        e.prev_hash = tip.hash
        e.hash = ev.chain_hash(e)
        write_deltalake(str(root / "registry" / "events"), ev.to_arrow([e]), mode="append", schema_mode="merge")

    def forge_commit(root: Path, reg: Registry, *specs: dict) -> None:
        """Several events as one commit (one timestamp), chained correctly, under the policy in force."""
        tip = reg.audit()[-1]
        prev, out = tip.hash, []
        for i, fields in enumerate(specs):
            e = ev.Event(seq=tip.seq + 1 + i, ts=tip.ts + timedelta(seconds=1), **{"policy": tip.policy, **fields})
            e.prev_hash = prev
            e.hash = prev = ev.chain_hash(e)
            out.append(e)
        write_deltalake(str(root / "registry" / "events"), ev.to_arrow(out), mode="append", schema_mode="merge")

    promote = {
        "model": "m",
        "kind": ev.STAGE_CHANGED,
        "actor": "alice",
        "version": 1,
        "from_value": "staging",
        "to_value": "production",
    }

    def edit(rows):  # type: ignore[no-untyped-def]
        rows[-1]["to_value"] = "b"
        return rows

    def edit_rehashed(rows):  # type: ignore[no-untyped-def]
        rows[1]["digest"] = rows[0]["digest"]  # v2 now claims v1's bytes; its own hash recomputed
        e = ev.from_arrow(pa.Table.from_pylist([rows[1]], schema=ev.SCHEMA))[0]
        rows[1]["hash"] = ev.chain_hash(e)
        return rows

    def swap(rows):  # type: ignore[no-untyped-def]
        rows[1], rows[2] = rows[2], rows[1]
        rows[1]["seq"], rows[2]["seq"] = rows[2]["seq"], rows[1]["seq"]
        return rows

    attacks = {
        "edit": lambda root, reg: rewrite(root, edit),
        "edit-and-rehash": lambda root, reg: rewrite(root, edit_rehashed),
        "delete": lambda root, reg: rewrite(root, lambda rows: rows[:1] + rows[2:]),
        "reorder": lambda root, reg: rewrite(root, swap),
        "promotion-without-approval": lambda root, reg: forge(
            root,
            reg,
            model="m",
            kind=ev.STAGE_CHANGED,
            actor="alice",
            version=1,
            from_value="staging",
            to_value="production",
            reason="forged",
            payload=json.dumps({"cause": "transition"}),
        ),
        "disallowed-move": lambda root, reg: forge(
            root,
            reg,
            model="m",
            kind=ev.STAGE_CHANGED,
            actor="alice",
            version=3,
            from_value="development",
            to_value="production",
            reason="forged",
            payload=json.dumps({"cause": "transition"}),
        ),
        "promotion-dressed-as-replacement": lambda root, reg: forge_commit(
            root, reg, {**promote, "payload": json.dumps({"cause": "replaced"})}
        ),
        "two-moves-in-one-commit": lambda root, reg: forge_commit(
            root,
            reg,
            {**promote, "payload": json.dumps({"cause": "transition"})},
            {**promote, "version": 2, "from_value": "development", "to_value": "staging"},
        ),
        "born-in-production": lambda root, reg: forge_commit(
            root,
            reg,
            {"model": "m", "kind": ev.REGISTERED, "actor": "alice", "version": 4, "from_value": "production"},
        ),
        "riding-on-a-denial": lambda root, reg: forge_commit(
            root,
            reg,
            {"model": "m", "kind": ev.DENIED, "actor": "alice", "key": "deploy"},
            {"model": "m", "kind": ev.ALIAS_SET, "actor": "alice", "version": 2, "key": "champion", "to_value": "2"},
        ),
        "made-up-policy": lambda root, reg: forge_commit(
            root, reg, {**promote, "policy": "root=sha256:" + "1" * 64, "payload": json.dumps({"cause": "transition"})}
        ),
        "champion-by-hand": lambda root, reg: forge(
            root, reg, model="m", kind=ev.ALIAS_SET, actor="alice", version=2, key="champion", to_value="2"
        ),
        "unhashed-event": lambda root, reg: write_deltalake(
            str(root / "registry" / "events"),
            ev.to_arrow(
                [
                    ev.Event(
                        seq=reg.audit()[-1].seq + 1,
                        ts=reg.audit()[-1].ts + timedelta(seconds=1),
                        model="m",
                        kind=ev.TAG_SET,
                        actor="alice",
                        version=1,
                        key="k",
                        to_value="v",
                    )
                ]
            ),
            mode="append",
        ),
    }
    accepted = []
    for name, attack in attacks.items():
        gated = name in ("promotion-without-approval", "promotion-dressed-as-replacement", "two-moves-in-one-commit")
        root, reg = fresh(name, gate=gated or name == "made-up-policy")
        assert reg.fsck() == [], reg.fsck()
        attack(root, reg)
        if not Registry.open(root).fsck():
            accepted.append(name)
    return {"tried": len(attacks), "accepted": accepted}


def s3_outages(work: Path, rounds: int, seed: int) -> dict | None:
    """Registers on an S3 root (moto on loopback, behind the tests' fault proxy) through one fault each: a 3 s
    outage starting at a blob upload, a commit, a probe or a log read; 3 s of resets or 500/503 answers; a commit
    whose reply is lost. Counts registers that succeeded (the endpoint returned within the deadline), versions that
    came out wrong, and writes that landed twice."""
    try:
        import boto3

        from model_ops_tests.test_s3_faults import BLOB_PUT, COMMIT_PUT, LOG_PROBE, LOG_READ, FaultProxy
    except ImportError as e:  # moto and the tests ship with the project's test extra
        print(f"S3 faults: skipped ({e}; install with `pip install -e '.[test]'`)")
        return None
    import socket

    from model_ops import location
    from model_ops.registry import Registry
    from model_ops_tests.helpers import free_port

    port = free_port()
    log = (work / "moto.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    proxy = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the S3 test endpoint did not start") from None
                time.sleep(0.1)
        creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
        boto3.client("s3", endpoint_url=endpoint, **creds).create_bucket(Bucket="reliability")
        proxy = FaultProxy(endpoint)
        os.environ.update(
            AWS_ENDPOINT_URL=proxy.endpoint,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_REGION="us-east-1",
            AWS_CONFIG_FILE=str(work / "no-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(work / "no-aws-credentials"),
        )
        location._cached_client.cache_clear()
        faults = [
            ("outage at blob upload", [{**BLOB_PUT, "action": "outage", "seconds": 3, "times": 1}]),
            ("outage at commit", [{**COMMIT_PUT, "action": "outage", "seconds": 3, "times": 1}]),
            ("outage at probe", [{**LOG_PROBE, "action": "outage", "seconds": 3, "times": 1}]),
            ("outage at log read", [{**LOG_READ, "action": "outage", "seconds": 3, "times": 1}]),
            ("3 s of resets", [{"action": "reset", "for_seconds": 3}]),
            ("3 s of 500s", [{"action": "500", "for_seconds": 3}]),
            ("3 s of 503s at commit", [{**COMMIT_PUT, "action": "503", "for_seconds": 3}]),
            ("lost commit reply", [{**COMMIT_PUT, "actions": ["lose_reply", "lose_reply_clean"], "times": 1}]),
        ]
        rng = random.Random(seed)
        tried = succeeded = wrong = 0
        failures: list[str] = []
        for i in range(rounds):
            name, rules = faults[i % len(faults)] if i < len(faults) else rng.choice(faults)
            root = f"s3://reliability/round-{i}"
            reg = Registry.open(root, actor="alice")
            first = work / f"s3-{i}-a.bin"
            first.write_bytes(os.urandom(2048))
            reg.register("m", first)
            proxy.set_rules(rules)
            path = work / f"s3-{i}-b.bin"
            path.write_bytes(os.urandom(2048))
            tried += 1
            try:
                mv = Registry.open(root, actor="alice").register("m", path)
                succeeded += 1
            except Exception as e:  # counted and named below: the goal is that none fails
                failures.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0]}")
                mv = None
            proxy.clear()
            versions = [(v.version, v.digest) for v in Registry.open(root).versions("m")]
            if mv is not None and (len(versions) != 2 or versions[1] != (mv.version, mv.digest)):
                wrong += 1
        return {"tried": tried, "succeeded": succeeded, "wrong": wrong, "failures": failures}
    finally:
        if proxy is not None:
            proxy.close()
        server.terminate()
        server.wait(timeout=10)
        log.close()


def signature_forgeries(work: Path) -> dict:
    """Forged versions that copy a genuine version's digest and signature into another record (other params,
    metrics, dataset, lineage, parent, flavor, schema, description, model, artifact), each tried at load_model,
    model_ops.load, fetch, promotion into a stage that requires signatures, fsck and `model-ops verify`, with an
    ECDSA key and with an HMAC secret. Counts the (forgery, place) pairs that accepted it."""
    import copy

    from model_ops.artifacts import signing
    from model_ops.registry import Registry
    from model_ops_tests.helpers import tiny_model
    from model_ops_tests.test_signing import _variants, forge_version, refused_everywhere

    private, public, _ = signing.generate_key()
    (work / "key.pem").write_bytes(private)
    (work / "key.pub.pem").write_bytes(public)
    tried, accepted = 0, []
    saved = {k: os.environ.get(k) for k in (signing.KEY_ENV, signing.PUBLIC_KEY_ENV)}
    try:
        for kind, secret in (("ecdsa", str(work / "key.pem")), ("hmac", "reliability-shared-secret-0123456789")):
            root = work / f"sig-{kind}"
            os.environ[signing.KEY_ENV] = secret
            os.environ.pop(signing.PUBLIC_KEY_ENV, None)
            owner = Registry.open(root, actor="trainer")
            v1 = owner.register_model("m", tiny_model(1))
            v2 = owner.register_model("m", tiny_model(2))
            if kind == "ecdsa":  # the reader holds the public key only
                os.environ.pop(signing.KEY_ENV)
                os.environ[signing.PUBLIC_KEY_ENV] = str(work / "key.pub.pem")
            attacker = Registry.open(root, actor="trainer")
            for what, model, number, semver, digest, change in _variants(v1, v2.digest):
                record = copy.deepcopy(dict(v1.record))
                change(record)
                forged = forge_version(attacker, model, number, semver, digest, record)
                tried += 1
                with contextlib.redirect_stdout(io.StringIO()):  # `model-ops verify` prints its report
                    found = refused_everywhere(attacker, forged, work)
                accepted += [f"{kind}: {what} at {where}" for where in found]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"tried": tried, "accepted": accepted}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--acks", type=int, default=1000, help="acknowledged writes to collect under faults")
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2013)
    parser.add_argument("--s3-rounds", type=int, default=16, help="registers through S3 faults (0: skip)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="model_ops_reliability_"))
    try:
        mix = fault_mix(work / "mix", args.acks, args.writers, args.seed)
        print(
            f"fault mix: {mix['acknowledged']} acknowledged writes ({mix['registrations']} registrations, "
            f"{mix['records']} records) by {args.writers} writers, {mix['kills']} SIGKILLs, {mix['seconds']} s"
        )
        print(f"  acknowledged writes lost: {mix['lost']} of {mix['acknowledged']}")
        print(f"  version numbers reused:   {mix['reused']}")
        print(f"  fsck problems afterwards: {len(mix['fsck_problems'])}")
        for p in mix["fsck_problems"][:10]:
            print(f"    - {p}")
        dmg = damaged_logs(work)
        print(
            f"damaged logs ({dmg['kinds']} kinds): writes that went through {dmg['writes_through']}, "
            f"damage fsck missed {dmg['missed']}, repairs that lost a version {dmg['unrepaired']}"
        )
        s3 = s3_outages(work, args.s3_rounds, args.seed) if args.s3_rounds else None
        if s3 is not None:
            print(
                f"S3 faults: registers through a transient fault that succeeded after the endpoint returned: "
                f"{s3['succeeded']} of {s3['tried']}; wrong or duplicated versions: {s3['wrong']}"
            )
            for f in s3["failures"]:
                print(f"    - {f}")
        forged = forgeries(work)
        sigs = signature_forgeries(work)
        print(
            f"forged signed versions accepted (load, fetch, promotion, fsck, verify): {len(sigs['accepted'])} "
            f"of {sigs['tried']} forgeries"
        )
        for a in sigs["accepted"]:
            print(f"    - {a}")
        print(f"forged events accepted by fsck: {len(forged['accepted'])} of {forged['tried']} {forged['accepted']}")
        ok = (
            mix["acknowledged"] >= args.acks
            and mix["lost"] == 0
            and mix["reused"] == 0
            and not mix["fsck_problems"]
            and dmg["writes_through"] == dmg["missed"] == dmg["unrepaired"] == 0
            and not forged["accepted"]
            and not sigs["accepted"]
            and (s3 is None or (s3["succeeded"] == s3["tried"] and s3["wrong"] == 0))
        )
        print("all goals met" if ok else "GOALS MISSED")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
