"""The registry's state at one moment, kept in a verified SQLite file so a fresh process need not fold the log.

The event log stays the truth; a snapshot is a cache of its fold that can be thrown away and rebuilt. Maintenance
(:func:`model_ops.registry.maintenance.maintain`) folds the log to Delta version V and writes that state to
``registry/snapshots/<V>-<id>.sqlite``, then points ``registry/snapshot.json`` at it with the file's SHA-256.

It is used two ways:

- **Answered from directly** (``resolve``, ``versions``, ``show``, ``models`` of a fresh process, on a local
  root): only while nothing was committed since V (Delta commit V+1 does not exist: one ``stat``), the snapshot was
  confirmed current less than :data:`STALE_AFTER` ago (why the probe is exact only then: ``Registry._sync``), the
  root's policy file is the one it was written under (stages come from it), and the file is the one whose digest
  the pointer holds. This module imports neither Arrow nor the Delta engine, and rows are read by index, so time
  and memory stay small at any size.
- **Resumed from**: when the log moved on, the registry builds its state from the snapshot and folds only the
  events after it (``Registry._sync``).

A snapshot that fails any check is ignored, never trusted: the registry then folds the log from the start, as it
would without one. ``fsck`` compares the snapshot with the log's own fold at the same event.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_ops.location import Location
from model_ops.registry import lookup
from model_ops.registry.refs import Ref, check_name, parse_ref
from model_ops.registry.version import ModelVersion

if TYPE_CHECKING:
    from model_ops.registry.search import SearchPage
    from model_ops.registry.state import RegistryState

FORMAT = 2  # 2: the search tables (search.SCHEMA) beside the state's own
POINTER = "snapshot.json"
DIRECTORY = "snapshots"
POLICY_FILE = "policy.yaml"
POLICY_ENV = "MODEL_OPS_POLICY"
# Well inside the event log's retention (7 days), as Registry._sync's own limit: see the module docstring.
STALE_AFTER = timedelta(days=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_HASH_CHUNK = 1 << 20

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE models(
    name TEXT PRIMARY KEY, versions INTEGER NOT NULL, production INTEGER,
    production_history TEXT NOT NULL, rolled_back TEXT NOT NULL
);
CREATE TABLE versions(
    model TEXT NOT NULL, version INTEGER NOT NULL, semver TEXT NOT NULL, digest TEXT NOT NULL,
    created_us INTEGER NOT NULL, created_by TEXT NOT NULL, stage TEXT NOT NULL, run_id TEXT, seq INTEGER NOT NULL,
    tags TEXT, payload TEXT NOT NULL, PRIMARY KEY (model, version)
);
CREATE INDEX versions_by_semver ON versions(model, semver);
CREATE INDEX versions_by_stage ON versions(model, stage, version);
CREATE TABLE aliases(model TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (model, alias));
CREATE TABLE approvals(
    model TEXT NOT NULL, version INTEGER NOT NULL, stage TEXT NOT NULL, actor TEXT NOT NULL, identity TEXT
);
CREATE TABLE serving_records(model TEXT NOT NULL, seq INTEGER NOT NULL, event TEXT NOT NULL);
"""


def policy_key(registry_location: Location) -> str:
    """What the stages of a local registry are decided by: the digest of its ``policy.yaml``, or of the shipped
    default when it has none (a model_ops release with another default is another policy)."""
    try:
        raw = (registry_location.path / POLICY_FILE).read_bytes()
        origin = "root"
    except (FileNotFoundError, NotADirectoryError):
        from importlib import resources  # imported here: most roots have their own policy file

        raw = resources.files("model_ops.registry").joinpath("default_policy.yaml").read_bytes()
        origin = "default"
    return f"{origin}={hashlib.sha256(raw).hexdigest()}"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def stat_key(path: Path) -> list[int]:
    """What says a file was not touched since it was hashed, as git's index and rsync's quick check use it: any
    write changes its mtime and ctime (ctime cannot be set back), a copy or a replacement changes its inode."""
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


# A change this soon after a file's last one may carry the same timestamps on a filesystem with a coarse clock
# (one tick is 4-10 ms): the "racily clean" case git's index knows. A stat key is recorded only once it is past.
_SETTLE_NS = 50_000_000


def settled_key(path: Path, before: list[int] | None) -> list[int] | None:
    """The stat key to record for ``path``, hashed after ``before`` was taken: None when the file changed since
    (same inode, size and mtime required; a rename changes only the ctime), so readers hash it."""
    for _ in range(3):
        key = stat_key(path)
        if time.time_ns() - max(key[3], key[4]) > _SETTLE_NS:
            break
        time.sleep(_SETTLE_NS / 1e9)
    else:
        return None
    return key if before is not None and key[:4] == before[:4] else None


def commit_digest(registry_location: Location, version: int) -> str | None:
    """The SHA-256 of the event log's commit file ``version``; None when it is not there."""
    try:
        return hashlib.sha256(
            (registry_location.path / "events" / "_delta_log" / f"{version:020d}.json").read_bytes()
        ).hexdigest()
    except (FileNotFoundError, NotADirectoryError):
        return None


def read_pointer(registry_location: Location) -> dict[str, Any] | None:
    """The pointer to the current snapshot; None when there is none or it is not one model_ops wrote (and on S3,
    where no snapshots are kept)."""
    if registry_location.is_s3:
        return None
    try:
        doc = json.loads((registry_location.path / POINTER).read_bytes())
    except (OSError, ValueError):
        return None
    needed = ("file", "sha256", "delta_version", "last_seq", "confirmed_at", "policy", "production_stage")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or any(k not in doc for k in needed):
        return None
    if not isinstance(doc["file"], str) or "/" in doc["file"] or not doc["file"].endswith(".sqlite"):
        return None
    return doc


def _as_utc(text: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo is not None else None


class _JsonRecord(Mapping[str, Any]):
    """A registration record parsed on first read (listing many versions parses none)."""

    __slots__ = ("_text", "_doc")

    def __init__(self, text: str) -> None:
        self._text = text
        self._doc: dict[str, Any] | None = None

    @property
    def doc(self) -> dict[str, Any]:
        if self._doc is None:
            try:
                parsed = json.loads(self._text) if self._text else {}
            except ValueError:
                parsed = {}
            self._doc = parsed if isinstance(parsed, dict) else {}
        return self._doc

    def __getitem__(self, key: str) -> Any:
        return self.doc[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.doc)

    def __len__(self) -> int:
        return len(self.doc)

    def __repr__(self) -> str:
        return repr(self.doc)


class _ModelIndex:
    """One model's versions as :func:`lookup.find_number` asks about them, answered by the snapshot's indexes."""

    def __init__(self, snapshot: Snapshot, name: str, count: int) -> None:
        self._s, self.name, self._count = snapshot, name, count

    def count(self) -> int:
        return self._count

    def semver_number(self, semver: str) -> int | None:
        return self._s._one("SELECT version FROM versions WHERE model = ? AND semver = ?", (self.name, semver))

    def alias_number(self, alias: str) -> int | None:
        return self._s._one("SELECT version FROM aliases WHERE model = ? AND alias = ?", (self.name, alias))

    def alias_names(self) -> list[str]:
        return [r[0] for r in self._s._all("SELECT alias FROM aliases WHERE model = ?", (self.name,))]

    def newest_in_stage(self, stage: str) -> int | None:
        return self._s._one("SELECT max(version) FROM versions WHERE model = ? AND stage = ?", (self.name, stage))


class Snapshot:
    """An open snapshot whose file matched its digest. Safe to share between threads (reads are serialised)."""

    def __init__(self, registry_location: Location, pointer: dict[str, Any], path: Path) -> None:
        self.location = registry_location
        self.pointer = pointer
        self.path = path
        self.delta_version = int(pointer["delta_version"])
        self.last_seq = int(pointer["last_seq"])
        self.production_stage = str(pointer["production_stage"])
        self.stages: list[str] = [str(s) for s in pointer.get("stages") or []]
        # immutable=1: the file is never written after its digest was taken, so SQLite need not lock or look
        # for a journal (and a read-only directory is fine).
        uri = path.resolve().as_uri() + "?mode=ro&immutable=1"
        self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._conn.close()

    def _all(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _one(self, sql: str, params: tuple = ()) -> Any:
        rows = self._all(sql, params)
        return rows[0][0] if rows else None

    def meta(self, key: str) -> Any:
        value = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(value) if value is not None else None

    def is_current(self) -> bool:
        """Whether the log is still exactly where the snapshot was taken, as far as files can tell without the
        Delta engine: commit V+1 does not exist (nothing committed since; exact within :data:`STALE_AFTER`, see
        the module docstring), nothing was acknowledged beyond V (a receipt without its commit is damage, which
        only the full read reports), and commit V is byte for byte the file the snapshot was taken at (so a
        snapshot copied from another registry, or a commit damaged since, is not answered from). A file that
        cannot be read counts as "not current": the log is then read instead."""
        confirmed = _as_utc(str(self.pointer["confirmed_at"]))
        if confirmed is None or datetime.now(timezone.utc) - confirmed > STALE_AFTER:
            return False
        log = self.location.path / "events" / "_delta_log"
        following = f"{self.delta_version + 1:020d}.json"
        try:
            if (log / following).exists() or (self.location.path / "receipts" / following).exists():
                return False
            return commit_digest(self.location, self.delta_version) == self.pointer.get("commit_sha256")
        except OSError:
            return False

    # ------------------------------------------------------------------ the reads a Registry also answers

    def _index(self, name: str) -> _ModelIndex:
        check_name(name)
        count = self._one("SELECT versions FROM models WHERE name = ?", (name,))
        if not count:
            raise lookup.unknown_model(name, self.location.path.parent, self.models())
        return _ModelIndex(self, name, int(count))

    _COLUMNS = "version, semver, stage, digest, created_us, created_by, run_id, tags, payload"

    def _version(self, name: str, row: tuple, aliases: tuple[str, ...]) -> ModelVersion:
        number, semver, stage, digest, created_us, created_by, run_id, tags, payload = row
        return ModelVersion(
            name,
            number,
            semver,
            stage,
            aliases,
            digest,
            _EPOCH + timedelta(microseconds=created_us),
            created_by,
            run_id,
            json.loads(tags) if tags else {},
            _JsonRecord(payload),
        )

    def resolve(self, ref: str | Ref, stages: list[str] | None = None) -> ModelVersion:
        parsed = ref if isinstance(ref, Ref) else parse_ref(ref)
        index = self._index(parsed.name)
        number = lookup.find_number(index, parsed, self.stages if stages is None else stages)
        rows = self._all(f"SELECT {self._COLUMNS} FROM versions WHERE model = ? AND version = ?", (index.name, number))
        aliases = self._all(
            "SELECT alias FROM aliases WHERE model = ? AND version = ? ORDER BY alias", (index.name, number)
        )
        mv = self._version(index.name, rows[0], tuple(a for (a,) in aliases))
        lookup.check_kind(parsed, mv.flavor, mv.ref)
        return mv

    def versions(self, name: str) -> list[ModelVersion]:
        index = self._index(name)
        by_version: dict[int, list[str]] = {}
        for alias, number in self._all("SELECT alias, version FROM aliases WHERE model = ? ORDER BY alias", (name,)):
            by_version.setdefault(number, []).append(alias)
        rows = self._all(f"SELECT {self._COLUMNS} FROM versions WHERE model = ? ORDER BY version", (index.name,))
        return [self._version(name, row, tuple(by_version.get(row[0], ()))) for row in rows]

    def models(self) -> list[str]:
        return [n for (n,) in self._all("SELECT name FROM models WHERE versions > 0 ORDER BY name")]

    def model_summaries(self) -> list[dict[str, Any]]:
        rows = self._all(
            "SELECT name, versions, (SELECT max(version) FROM versions WHERE model = name AND stage = ?) "
            "FROM models WHERE versions > 0 ORDER BY name",
            (self.production_stage,),
        )
        return [{"name": n, "versions": c, "latest": c, "production": p} for n, c, p in rows]

    def search_contents(self) -> dict[str, Any]:
        """The search tables' rows, for comparison with a fold's (``search.contents_of``)."""
        from model_ops.registry import search  # imported by the reads that need it: `resolve` does not

        with self._lock:
            return search.contents(self._conn)

    def search(
        self, query: str, *, order_by: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> SearchPage:
        from model_ops.registry import search

        with self._lock:
            pairs, following, order = search.run(self._conn, query, order_by=order_by, limit=limit, cursor=cursor)
        return search.SearchPage(self._page(pairs), following, order)

    def _page(self, pairs: list[tuple[str, int]]) -> list[ModelVersion]:
        """The versions of one page of results, in its order: two queries, whatever the page's size."""
        if not pairs:
            return []
        keys = json.dumps([[name, number] for name, number in pairs])
        wanted = "(SELECT json_extract(value, '$[0]') AS model, json_extract(value, '$[1]') AS version FROM json_each(?)) AS w"
        rows = self._all(
            f"SELECT w.model, {', '.join('v.' + c.strip() for c in self._COLUMNS.split(','))} FROM {wanted} "
            "JOIN versions v ON v.model = w.model AND v.version = w.version",
            (keys,),
        )
        aliases: dict[tuple[str, int], list[str]] = {}
        for model, alias, number in self._all(
            f"SELECT a.model, a.alias, a.version FROM {wanted} JOIN aliases a "
            "ON a.model = w.model AND a.version = w.version ORDER BY a.alias",
            (keys,),
        ):
            aliases.setdefault((model, number), []).append(alias)
        by_key = {(row[0], row[1]): row[1:] for row in rows}
        return [
            self._version(name, by_key[(name, number)], tuple(aliases.get((name, number), ())))
            for name, number in pairs
        ]

    # ------------------------------------------------------------------ resuming a fold

    def text(self, rowid: int) -> str:
        """A version's registration payload (the lazy payload of a state resumed from this snapshot)."""
        return str(self._one("SELECT payload FROM versions WHERE rowid = ?", (rowid,)) or "")

    def state(self) -> RegistryState:
        """The fold at event ``last_seq``, as objects: what ``Registry._sync`` resumes from. Payloads stay in the
        file until read. Raises ValueError when the rows do not make a state (then the log is folded instead)."""
        from collections import defaultdict

        from model_ops.registry.receipts import events_of
        from model_ops.registry.state import RegistryState, VersionState, gc_paused

        state = RegistryState(self.production_stage)
        with gc_paused():
            for name, _, production, history, rolled in self._all("SELECT * FROM models"):
                m = state.model(name)
                m.production = production
                m.production_history = list(json.loads(history))
                m.rolled_back = set(json.loads(rolled))
            rows = self._all(
                "SELECT rowid, model, version, semver, digest, created_us, created_by, stage, run_id, seq, tags "
                "FROM versions ORDER BY model, version"
            )
            for rowid, model, number, semver, digest, created_us, created_by, stage, run_id, seq, tags in rows:
                m = state.model(model)
                if number != len(m.versions) + 1:
                    raise ValueError(f"snapshot {self.path.name}: {model} version {number} out of order")
                vs = VersionState(number, semver, digest, created_us, created_by, stage, run_id, (self, rowid), seq)
                if tags:
                    vs.tags = json.loads(tags)
                m.versions.append(vs)
                m.by_digest.setdefault(digest, number)
                m.by_semver[semver] = number
            for model, alias, number in self._all("SELECT model, alias, version FROM aliases"):
                state.model(model).aliases[alias] = number
            for model, number, stage, actor, identity in self._all("SELECT * FROM approvals"):
                approvals = state.model(model).approvals
                if not isinstance(approvals, defaultdict):
                    state.model(model).approvals = approvals = defaultdict(set, approvals)
                approvals[(number, stage)].add((actor, identity))
            records = self._all("SELECT model, event FROM serving_records ORDER BY seq")
            for model, event in records:
                state.model(model).serving_records.extend(events_of({"events": [json.loads(event)]}))
        for m in state.models.values():
            if len(m.versions) != self._one("SELECT versions FROM models WHERE name = ?", (m.name,)):
                raise ValueError(f"snapshot {self.path.name}: {m.name} has a version count its rows do not match")
        state.last_seq = self.last_seq
        state.last_hash = self.meta("last_hash")
        last_ts = self.meta("last_ts")
        state.last_ts = datetime.fromisoformat(last_ts) if last_ts else None
        state.problems = list(self.meta("problems") or [])
        state.gap_after = self.meta("gap_after")
        state.seed, state.touched = self, set()  # what the events after this one change, for the search seed
        return state

    def copy_search_tables(self, conn: sqlite3.Connection) -> bool:
        """Copy this snapshot's search tables (``search.SCHEMA``, as maintenance filled them from the same fold
        this snapshot holds) into ``conn``, which must have been opened with ``uri=True``. False when the file
        is gone (pruned since it was opened): the caller builds the tables from the fold instead."""
        from model_ops.registry import search

        uri = self.path.resolve().as_uri() + "?mode=ro&immutable=1"
        try:
            conn.execute("ATTACH DATABASE ? AS seed", (uri,))
        except sqlite3.Error:
            return False
        try:
            conn.executescript(search.SCHEMA)
            with conn:
                for table in search.TABLES:
                    conn.execute(f"INSERT INTO main.{table} SELECT * FROM seed.{table}")
        finally:
            conn.execute("DETACH DATABASE seed")
        return True


def contents(state: RegistryState) -> dict[str, Any]:
    """Everything a snapshot keeps of a state, in a form two states can be compared by (fsck, tests)."""
    out: dict[str, Any] = {"last_seq": state.last_seq, "last_hash": state.last_hash}
    for m in state.models.values():
        out[m.name] = {
            "versions": [
                (v.version, v.semver, v.digest, v.stage, v.run_id, v.seq, v.created_at, v.created_by, v.tags, v.payload)
                for v in m.versions
            ],
            "aliases": dict(m.aliases),
            "production": m.production,
            "production_history": list(m.production_history),
            "rolled_back": sorted(m.rolled_back),
            "approvals": {k: sorted(v, key=str) for k, v in m.approvals.items() if v},
            "serving_records": [(e.seq, e.kind, e.hash) for e in m.serving_records],
        }
    return out


def problems(registry_location: Location, fold_to: Any) -> list[str]:
    """What is wrong with the current snapshot, for fsck: a file that does not match its digest, or a state that
    differs from the log's own fold at the same event (``fold_to(seq)`` gives that fold)."""
    pointer = read_pointer(registry_location)
    if pointer is None:
        if not registry_location.is_s3 and (registry_location.path / POINTER).exists():
            return [f"the state snapshot pointer {registry_location.path / POINTER} cannot be read (it is ignored)"]
        return []
    snap = open_verified(registry_location, full=True)
    hint = "it is ignored; `model-ops maintain` writes a new one"
    if snap is None:
        return [f"the state snapshot {pointer['file']} is missing or does not match its digest ({hint})"]
    try:
        mine = contents(snap.state())
    except Exception as e:  # whatever is wrong with its rows, it is reported and ignored
        snap.close()
        return [f"the state snapshot {pointer['file']} cannot be read: {e} ({hint})"]
    fold = fold_to(snap.last_seq)
    theirs = contents(fold)
    try:
        from model_ops.registry import search

        searchable = snap.search_contents() == search.contents_of(fold)
    except Exception:  # unreadable search tables are as wrong as different ones
        searchable = False
    snap.close()
    if mine == theirs and not searchable:
        return [
            f"the state snapshot {pointer['file']} answers searches differently from the event log's fold at "
            f"event {snap.last_seq} ({hint})"
        ]
    if mine == theirs:
        return []
    differing = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    return [
        f"the state snapshot {pointer['file']} differs from the event log's fold at event {snap.last_seq} "
        f"(in {', '.join(differing[:5])}): the log is the truth; run `model-ops maintain` to replace it"
    ]


def open_verified(registry_location: Location, *, full: bool = False) -> Snapshot | None:
    """The snapshot ``snapshot.json`` points at, once its file matched the digest; None when there is none or it
    does not match (or cannot be read): the registry then does without it.

    The file is hashed only when it is not provably the file maintenance hashed (``stat_key`` differs from the
    pointer's, e.g. after any write to it or a copy), or when ``full`` (fsck, and maintenance before it confirms
    the snapshot again): a read of a 100k-version registry must not pay for hashing 100 MB."""
    if registry_location.is_s3:
        return None
    pointer = read_pointer(registry_location)
    if pointer is None:
        return None
    path = registry_location.path / DIRECTORY / pointer["file"]
    try:
        if path.stat().st_size != pointer.get("size"):
            return None
        if (full or pointer.get("stat") != stat_key(path)) and file_digest(path) != pointer["sha256"]:
            return None
        return Snapshot(registry_location, pointer, path)
    except (OSError, sqlite3.Error):
        return None


def open_current(registry_location: Location, *, policy_given: bool = False) -> Snapshot | None:
    """A snapshot to answer reads from directly, without the registry's policy or its log: only when it is
    current (nothing written since), was written under the root policy as it is now, holds a state without
    problems, and no narrowing policy was asked for. Cheap checks first: the file is hashed last."""
    if registry_location.is_s3 or policy_given or os.environ.get(POLICY_ENV):
        return None
    pointer = read_pointer(registry_location)
    if pointer is None or pointer.get("problems"):
        return None
    try:
        if pointer["policy"] != policy_key(registry_location):
            return None
    except OSError:
        return None
    snap = open_verified(registry_location)
    if snap is None or snap.is_current():
        return snap
    snap.close()
    return None


# ---------------------------------------------------------------------------- writing (maintenance)


def write(
    registry_location: Location,
    state: RegistryState,
    delta_version: int,
    *,
    stages: list[str],
    confirmed_at: datetime,
) -> dict[str, Any]:
    """Write ``state`` (the fold at ``delta_version``) as the current snapshot and return its pointer. Atomic: the
    file is complete and synced before the pointer names it, and the pointer is replaced in one rename."""
    import tempfile
    import uuid

    from model_ops.registry.state import gc_paused

    directory = registry_location.path / DIRECTORY
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{delta_version:020d}-{uuid.uuid4().hex[:12]}.sqlite"
    fd, tmp_name = tempfile.mkstemp(prefix=".snapshot-", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        conn = sqlite3.connect(tmp)
        try:
            conn.execute("PRAGMA journal_mode = OFF")
            conn.execute("PRAGMA synchronous = OFF")
            conn.executescript(_SCHEMA)
            from model_ops.registry import search

            with gc_paused():
                _fill(conn, state)
                search.fill(conn, state)
            meta = {
                "format": FORMAT,
                "delta_version": delta_version,
                "last_seq": state.last_seq,
                "last_hash": state.last_hash,
                "last_ts": state.last_ts.isoformat() if state.last_ts else None,
                "problems": state.problems,
                "gap_after": state.gap_after,
            }
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
            conn.commit()
        finally:
            conn.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        before = stat_key(tmp)
        digest, size = file_digest(tmp), tmp.stat().st_size
        os.replace(tmp, directory / name)
        stat = settled_key(directory / name, before)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    pointer = {
        "format": FORMAT,
        "file": name,
        "sha256": digest,
        "size": size,
        "stat": stat,
        "delta_version": delta_version,
        "commit_sha256": commit_digest(registry_location, delta_version),
        "last_seq": state.last_seq,
        "policy": policy_key(registry_location),
        "stages": stages,
        "production_stage": state.production_stage,
        "problems": len(state.problems),
        "confirmed_at": confirmed_at.isoformat(),
        "written_at": datetime.now(timezone.utc).isoformat(),
    }
    write_pointer(registry_location, pointer)
    return pointer


def write_pointer(registry_location: Location, pointer: dict[str, Any]) -> None:
    import tempfile

    body = json.dumps(pointer, indent=1, sort_keys=True).encode()
    fd, tmp = tempfile.mkstemp(prefix=".snapshot-pointer-", dir=registry_location.path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, registry_location.path / POINTER)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fill(conn: sqlite3.Connection, state: RegistryState) -> None:
    from model_ops.registry.receipts import event_row

    for m in state.models.values():
        conn.execute(
            "INSERT INTO models VALUES (?, ?, ?, ?, ?)",
            (
                m.name,
                len(m.versions),
                m.production,
                json.dumps(m.production_history),
                json.dumps(sorted(m.rolled_back)),
            ),
        )
        conn.executemany(
            "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    m.name,
                    vs.version,
                    vs.semver,
                    vs.digest,
                    int((vs.created_at - _EPOCH) / timedelta(microseconds=1)),
                    vs.created_by,
                    vs.stage,
                    vs.run_id,
                    vs.seq,
                    json.dumps(vs.tags) if vs.tags else None,  # in the order they were set, as the fold keeps them
                    vs.payload,
                )
                for vs in m.versions
            ),
        )
        conn.executemany("INSERT INTO aliases VALUES (?, ?, ?)", [(m.name, a, n) for a, n in m.aliases.items()])
        conn.executemany(
            "INSERT INTO approvals VALUES (?, ?, ?, ?, ?)",
            [(m.name, n, stage, actor, who) for (n, stage), people in m.approvals.items() for actor, who in people],
        )
        conn.executemany(
            "INSERT INTO serving_records VALUES (?, ?, ?)",
            [(m.name, e.seq, json.dumps(event_row(e))) for e in m.serving_records],
        )


def prune(registry_location: Location, *, keep: str | None) -> int:
    """Delete snapshot files but ``keep`` and the newest one before it (a reader that read the previous pointer a
    moment ago may still be opening that file; one that loses the race falls back to folding the log), and the
    leftovers of interrupted writes older than an hour."""
    directory = registry_location.path / DIRECTORY
    if not directory.is_dir():
        return 0
    pointer = read_pointer(registry_location)  # again: another maintainer may have moved it since ``keep``
    spared = {keep, pointer["file"] if pointer else None}
    snapshots = sorted((p for p in directory.glob("*.sqlite") if p.name not in spared), key=lambda p: p.name)
    doomed = snapshots[:-1]
    cutoff = time.time() - 3600
    for leftover in directory.glob(".snapshot-*"):
        try:
            if leftover.stat().st_mtime < cutoff:
                doomed.append(leftover)
        except FileNotFoundError:
            pass
    removed = 0
    for path in doomed:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed
