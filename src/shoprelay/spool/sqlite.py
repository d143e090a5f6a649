"""The embedded durable spool: one SQLite file in WAL mode.

All writes go through one writer thread that commits whatever has queued up in one
transaction (group commit): an ingest request is answered only after the commit that holds
its messages, yet many concurrent requests share one fsync. Having a single writer also makes
the per-visitor state (cart, binding, session) a plain in-order fold, with no locking.

Tables: `messages` (one row per accepted message, unique per site and messageId: the dedup),
`work` (one row per stored message that has delivery work: the vendors it is still owed, as a
bit mask, and what became of it at the vendors that took it on the common path), `outbox` (only
the exceptional (message, vendor) pairs: retried, half-sent, dead, a part dead-lettered alone,
backfill claims, and everything an older file had), `exchanges` (one row per delivered or
skipped request of the common path: its answer, shared by every message it carried),
`vendors` (vendor name → bit index), `visitors` (per-visitor state), `aliases` (client
anonymousId → visitor id).

Work ids (`OutboxRow.id`, `DeadLetter.id`) name (message, vendor, part) without a row of their
own: ``(part + 1) << 47 | message_rowid << 5 | vendor_index`` (part 0 for the whole event), see
`work_id`. The common path writes nothing per vendor: `due` scans `work` past a per-(site,
vendor) cursor for the vendor's bit, and delivering clears the bit; a pair that needs more
(a retry, progress, a dead letter) is moved into `outbox` first, by the same id.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from shoprelay.events import StoredEvent
from shoprelay.identity.state import VisitorState
from shoprelay.rules import (
    IngestRules,
    OrderRecord,
    RequestContext,
    SitePolicy,
    UserBinding,
)
from shoprelay.spool.base import (
    BACKFILL,
    DEAD,
    DELIVERED,
    FIGURE_HOUR,
    FIGURE_MINUTE,
    FINISHED,
    PENDING,
    SKIPPED,
    DeadLetter,
    HistoryItem,
    IngestResult,
    LetterFilter,
    MessageRecord,
    OutboxRow,
    Retention,
    Router,
    SpoolStats,
    VendorFigures,
    WorkRecord,
    backfill_owns,
    gather_work,
    in_intake,
    kept_exchange,
    newest_first,
    noted_only,
    state_name,
    work_record,
)
from shoprelay.spool.disk import DiskState, DiskWatch, is_disk_full

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    message_id TEXT NOT NULL,
    visitor_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (site, message_id)
);
-- One row per stored message with delivery work: `owed` has bit `vendors.idx` set while that
-- vendor's work is on the common path (never tried); `done` lists the common path's fates,
-- "vendor_index:state:exchange " each, `last_exchange` the newest (retention). A vendor that
-- needs more than that (a retry, progress, a dead letter) has its bit cleared and a row in
-- `outbox` instead. A row with nothing owed and nothing done is deleted at once.
CREATE TABLE IF NOT EXISTS work (
    message INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    owed INTEGER NOT NULL,
    done TEXT,
    last_exchange INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS vendors (
    idx INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
-- One row per common-path request answered (delivered) or skipped: its exchange once, however
-- many messages it carried (`count`), for traces and the figures.
CREATE TABLE IF NOT EXISTS exchanges (
    id INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    vendor TEXT NOT NULL,
    state INTEGER NOT NULL,
    at REAL NOT NULL,
    count INTEGER NOT NULL DEFAULT 0,
    status INTEGER,
    request TEXT,
    response TEXT
);
CREATE INDEX IF NOT EXISTS exchanges_time ON exchanges (at);
-- The exceptional (message, vendor[, part]) pairs. `seq` orders them among a visitor's work
-- as their creation would have: 2 × message for the whole event (where its bit in `work`
-- sorted), 2 × (newest message when made) + 1 for a part dead-lettered alone, so a replayed
-- part comes after the work queued before it. (A backfill claim never reaches `due`.)
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    message INTEGER NOT NULL REFERENCES messages(id),
    site TEXT NOT NULL,
    vendor TEXT NOT NULL,
    visitor_id TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    sent INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    status INTEGER,
    error TEXT,
    response TEXT,
    request TEXT,
    part INTEGER,
    seq INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_done ON outbox (state, updated_at);
CREATE TABLE IF NOT EXISTS visitors (
    site TEXT NOT NULL,
    visitor_id TEXT NOT NULL,
    state BLOB NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (site, visitor_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (
    site TEXT NOT NULL,
    user_id TEXT NOT NULL,
    visitor_id TEXT NOT NULL,
    -- 1: made by the server API or a signed identify (an unsigned claim never moves it).
    strong INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (site, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS orders (
    site TEXT NOT NULL,
    order_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    received_at REAL NOT NULL DEFAULT 0,
    -- JSON list of the vendors its copies were sent to; NULL (older files): every vendor.
    vendors TEXT,
    PRIMARY KEY (site, order_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS aliases (
    site TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    visitor_id TEXT NOT NULL,
    PRIMARY KEY (site, anonymous_id)
) WITHOUT ROWID;
-- Retention forgets visitors not seen for a while, with their aliases and user bindings.
CREATE INDEX IF NOT EXISTS visitors_seen ON visitors (updated_at);
CREATE INDEX IF NOT EXISTS aliases_visitor ON aliases (site, visitor_id);
CREATE INDEX IF NOT EXISTS users_visitor ON users (site, visitor_id);
-- Traces: copies not stored (resends, duplicate order copies), kept within retention;
-- `order_id` is the order a dropped copy reported (NULL for other notes), found by equality.
CREATE TABLE IF NOT EXISTS notes (
    site TEXT NOT NULL,
    message_id TEXT NOT NULL,
    at REAL NOT NULL,
    note TEXT NOT NULL,
    order_id TEXT
);
CREATE INDEX IF NOT EXISTS notes_message ON notes (site, message_id);
CREATE INDEX IF NOT EXISTS notes_time ON notes (at);
-- Accepted requests not yet routed: one row a request, its messages as they came with what
-- the rules need (the request's context). The rules stage folds them in id order and
-- deletes each row in the transaction that writes what it decided; a row whose sender waits
-- for the fold's answer (the server API) keeps the answer in `result` until it is read.
CREATE TABLE IF NOT EXISTS intake (
    id INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    received_at REAL NOT NULL,
    context BLOB NOT NULL,
    messages BLOB NOT NULL,
    wait INTEGER NOT NULL DEFAULT 0,
    result BLOB,
    failed TEXT
);
"""
#: Made after `_migrate` (an older file's orders and notes tables gain their columns there
#: first). Few notes name an order: a partial index costs the other notes nothing.
_ORDERS_INDEX = "CREATE INDEX IF NOT EXISTS orders_time ON orders (received_at)"
_NOTES_ORDER_INDEX = ("CREATE INDEX IF NOT EXISTS notes_order ON notes (site, order_id) "
                      "WHERE order_id IS NOT NULL")
#: How an older file's notes on dropped order copies read (see `shoprelay.rules`): the order id
#: is taken back out of the prose once, when the column is added.
_ORDER_NOTE_HEAD, _ORDER_NOTE_TAIL = "deduplicated: order ", " was already reported"

log = logging.getLogger("shoprelay.spool")

#: Visitor states kept in memory by the writer (the rest are read back from the file).
_STATE_CACHE = 50_000
#: Most queued operations committed in one transaction.
_GROUP = 512
#: The rules stage folds at most this many intake rows, or about this many messages, per
#: writer operation: small enough that an append queued behind it waits only milliseconds.
_ROUTE_ROWS, _ROUTE_MESSAGES = 64, 400


T = TypeVar("T")


@dataclass(slots=True)
class _Op:
    run: Callable[[sqlite3.Connection], Any]
    future: Future[Any]


def _connect(path: str, sync: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a spool file written by an older release up to the current columns."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}
    if "request" not in columns:
        # The failed request of a dead letter, apart from the vendor's answer.
        conn.execute("ALTER TABLE outbox ADD COLUMN request TEXT")
    if "part" not in columns:
        # NULL: the whole event. Else one request of it, dead-lettered alone (an order line).
        conn.execute("ALTER TABLE outbox ADD COLUMN part INTEGER")
    if "received_at" not in {row[1] for row in conn.execute("PRAGMA table_info(orders)")}:
        # Orders are forgotten with their messages; those recorded before are dated now.
        conn.execute("ALTER TABLE orders ADD COLUMN received_at REAL NOT NULL DEFAULT 0")
        conn.execute("UPDATE orders SET received_at = ?", (time.time(),))
    if "strong" not in {row[1] for row in conn.execute("PRAGMA table_info(users)")}:
        conn.execute("ALTER TABLE users ADD COLUMN strong INTEGER NOT NULL DEFAULT 0")
    if "vendors" not in {row[1] for row in conn.execute("PRAGMA table_info(orders)")}:
        conn.execute("ALTER TABLE orders ADD COLUMN vendors TEXT")
    if "order_id" not in {row[1] for row in conn.execute("PRAGMA table_info(notes)")}:
        conn.execute("ALTER TABLE notes ADD COLUMN order_id TEXT")
        found = []
        for rowid, note in conn.execute("SELECT rowid, note FROM notes WHERE substr(note, 1, ?)"
                                        " = ?", (len(_ORDER_NOTE_HEAD), _ORDER_NOTE_HEAD)):
            order_id, tail, _ = note[len(_ORDER_NOTE_HEAD):].rpartition(_ORDER_NOTE_TAIL)
            if tail:
                found.append((order_id, rowid))
        conn.executemany("UPDATE notes SET order_id = ? WHERE rowid = ?", found)
    conn.execute(_ORDERS_INDEX)
    conn.execute(_NOTES_ORDER_INDEX)
    # A trace looks a message's work up; a backfill claims work once per (message, vendor).
    # Message ids only grow, so this index is appended to (cheap); an index of messages by
    # visitor (random keys) was measured at +30 % of the writer's time per message in the
    # best runs and is not kept: a trace by visitor scans newest first (bench/trace_cost.py).
    # One row per (message, vendor) for the whole event, plus one per part dead-lettered
    # alone: `outbox_message` (without the part) made way for `outbox_work`.
    conn.execute("DROP INDEX IF EXISTS outbox_message")
    try:
        conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS outbox_work ON outbox "
                     "(message, vendor, IFNULL(part, -1))")
    except sqlite3.IntegrityError:  # an odd older file: look-ups still work, unindexed claims
        log.warning("spool: outbox has two rows for one (message, vendor); no unique index")
        conn.execute("CREATE INDEX IF NOT EXISTS outbox_message_any ON outbox "
                     "(message, vendor)")
    # Replaced by the partial `outbox_parked`: it cost every insert and made `due` quadratic
    # in a visitor's backlog.
    conn.execute("DROP INDEX IF EXISTS outbox_visitor")
    _migrate_to_work(conn)


def _migrate_to_work(conn: sqlite3.Connection) -> None:
    """A file from before the `work` table (one outbox row per message and vendor): its
    never-tried pending rows become bits of one `work` row per message, in one transaction;
    every other row stays in `outbox` as the exceptional pair it is, given its `seq`."""
    if "seq" not in {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}:
        conn.execute("ALTER TABLE outbox ADD COLUMN seq INTEGER NOT NULL DEFAULT 0")
    # By `seq`, not id: whole-event work sorts by its message, wherever its row was made.
    conn.execute("DROP INDEX IF EXISTS outbox_due")
    conn.execute("DROP INDEX IF EXISTS outbox_parked")
    conn.execute("CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (site, vendor, state, seq)")
    conn.execute("CREATE INDEX IF NOT EXISTS outbox_waiting ON outbox "
                 "(site, vendor, visitor_id, seq) WHERE state = 0 AND next_at > 0")
    if conn.execute("PRAGMA user_version").fetchone()[0] >= _WORK_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("UPDATE outbox SET seq = message * 2 WHERE part IS NULL AND state != ?",
                     (BACKFILL,))
        # A part or a backfill claim was made after every row before it: it sorts after the
        # newest message those rows name (rare rows: a scan each is fine).
        conn.execute(
            "UPDATE outbox SET seq = 2 * COALESCE((SELECT MAX(o.message) FROM outbox o WHERE "
            "o.id < outbox.id AND o.part IS NULL AND o.state != ?), message) + 1 "
            "WHERE part IS NOT NULL OR state = ?", (BACKFILL, BACKFILL))
        names = [r[0] for r in conn.execute("SELECT DISTINCT vendor FROM outbox ORDER BY vendor")]
        known = dict(conn.execute("SELECT name, idx FROM vendors"))
        for name in names:
            if name not in known:
                known[name] = len(known)
                if known[name] >= _MAX_VENDORS:
                    raise RuntimeError(f"spool: more than {_MAX_VENDORS} vendors")
                conn.execute("INSERT INTO vendors (idx, name) VALUES (?, ?)",
                             (known[name], name))
        fresh = ("FROM outbox WHERE state = 0 AND attempts = 0 AND sent = 0 AND next_at = 0 "
                 "AND part IS NULL AND error IS NULL")
        owed: dict[int, list[Any]] = {}
        for message, site, vendor in conn.execute(f"SELECT message, site, vendor {fresh}"):
            entry = owed.setdefault(message, [site, 0])
            entry[1] |= 1 << known[vendor]
        conn.executemany("INSERT OR IGNORE INTO work (message, site, owed) VALUES (?, ?, ?)",
                         [(m, site, bits) for m, (site, bits) in owed.items()])
        conn.execute(f"DELETE {fresh}")
        conn.execute(f"PRAGMA user_version = {_WORK_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if owed:
        log.info("spool: %d message(s) of queued work moved into one work row each",
                 len(owed))


#: `PRAGMA user_version` once the outbox was migrated to work rows.
_WORK_VERSION = 1
#: Vendors a file can name: `work.owed` and the work id keep a vendor in 5 bits.
_MAX_VENDORS = 32
_VENDOR_BITS, _MESSAGE_BITS = 5, 42
_PART_SHIFT = _VENDOR_BITS + _MESSAGE_BITS
#: Parts a work id can name (an event's requests: order lines, far fewer in practice).
_MAX_PARTS = (1 << (63 - _PART_SHIFT)) - 1


def work_id(message: int, vendor: int, part: int | None = None) -> int:
    """The id of (message rowid, vendor index, part) work: no row needed to name it."""
    slot = 0 if part is None else part + 1
    if slot > _MAX_PARTS:
        raise ValueError(f"part {part} past the {_MAX_PARTS} a work id can name")
    return slot << _PART_SHIFT | message << _VENDOR_BITS | vendor


def split_work_id(ident: int) -> tuple[int, int, int | None]:
    """(message rowid, vendor index, part or None) of a work id."""
    slot = ident >> _PART_SHIFT
    return ((ident >> _VENDOR_BITS) & ((1 << _MESSAGE_BITS) - 1), ident & (_MAX_VENDORS - 1),
            slot - 1 if slot else None)


def _done_entries(done: str | None) -> dict[int, tuple[int, int]]:
    """A work row's common-path fates: vendor index → (state, exchange id); the last wins."""
    out: dict[int, tuple[int, int]] = {}
    for entry in (done or "").split():
        vendor, state, exchange = entry.split(":")
        out[int(vendor)] = (int(state), int(exchange))
    return out


#: Delivery claims this process holds, by spool file: one per file, whichever spool object
#: (the command line's early check, then the app's) asks for it.
_DELIVERY_LOCKS: dict[str, Any] = {}


class SpoolBusy(RuntimeError):
    """Another process already delivers from this SQLite file."""


class _Snapshot:
    """The ingest rules' view of the file, read inside the writer's open transaction."""

    def __init__(self, spool: SqliteSpool, conn: sqlite3.Connection, site: str) -> None:
        self._spool, self._conn, self._site = spool, conn, site

    def _one(self, sql: str, key: str) -> str | None:
        row = self._conn.execute(sql, (self._site, key)).fetchone()
        return None if row is None else str(row[0])

    def alias(self, anonymous_id: str) -> str | None:
        return self._one("SELECT visitor_id FROM aliases WHERE site=? AND anonymous_id=?",
                         anonymous_id)

    def user(self, user_id: str) -> UserBinding | None:
        row = self._conn.execute("SELECT visitor_id, strong FROM users WHERE site=? AND "
                                 "user_id=?", (self._site, user_id)).fetchone()
        return None if row is None else UserBinding(str(row[0]), bool(row[1]))

    def message_seen(self, message_id: str) -> bool:
        return self._one("SELECT 1 FROM messages WHERE site=? AND message_id=?",
                         message_id) is not None

    def order(self, order_id: str) -> OrderRecord | None:
        row = self._conn.execute("SELECT message_id, vendors FROM orders WHERE site=? AND "
                                 "order_id=?", (self._site, order_id)).fetchone()
        if row is None:
            return None
        vendors = None if row[1] is None else frozenset(orjson.loads(row[1]))
        return OrderRecord(str(row[0]), vendors)

    def state(self, visitor_id: str) -> VisitorState:
        return self._spool._state(self._conn, self._site, visitor_id)


class SqliteSpool:
    def __init__(
        self,
        path: str,
        *,
        router: Router,
        sync: str = "full",
        session_timeout: float = 1800.0,
        alias_for: Callable[[str, str], str],
        new_id: Callable[[], str],
        policy: Callable[[str], SitePolicy] | None = None,
        retention: Retention | None = None,
    ) -> None:
        self.path = path
        self._sync = sync
        #: What `prune` forgets (`Retention.cut`).
        self.retention = retention or Retention()
        self.rules = IngestRules(router=router, session_timeout=session_timeout,
                                 alias_for=alias_for, new_id=new_id, policy=policy)
        self._ops: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._states: OrderedDict[tuple[str, str], VisitorState] = OrderedDict()
        self._writer: threading.Thread | None = None
        self._reader_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        #: Called (from the writer thread) after a commit that made new work visible.
        self.on_new_work: Callable[[], None] = lambda: None
        #: Set by an operation that creates work; announced only once its commit is done, so
        #: a woken worker can never look before the work is there (a lost wake-up).
        self._announce = False
        #: The delivery claim (see `claim_delivery`), held while this process delivers.
        self._lock: str | None = None
        #: Called (from the writer thread) after a commit that appended to the intake.
        self.on_new_intake: Callable[[], None] = lambda: None
        #: This process runs the rules stage (`route_intake`); a route operation is queued.
        self._routing = False
        self._route_queued = False
        self._intake_added = False
        #: Writes refused for want of space (shoprelay.spool.disk): ingest answers 503.
        self._disk = DiskWatch(path)
        #: Vendor name ↔ bit index (the `vendors` table), read by every thread.
        self._vendor_index: dict[str, int] = {}
        self._vendor_names: dict[int, str] = {}
        self._vendors_lock = threading.Lock()
        #: Per (site, vendor): no `work` row below this message owes the vendor its bit. Bits
        #: are only ever cleared (new work gets a higher rowid), so a cursor found once stays
        #: true: `due` scans from it instead of from the start of the backlog.
        self._cursor: dict[tuple[str, str], int] = {}

    @property
    def disk_full(self) -> DiskState | None:
        """While the spool cannot write (its disk is full), what `/readyz` shows."""
        return None if self.path == ":memory:" else self._disk.state()

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path, self._sync)
        conn.executescript(_SCHEMA)
        _migrate(conn)
        self._reader = _connect(self.path, self._sync)
        self._writer = threading.Thread(target=self._write_loop, args=(conn,),
                                        name="shoprelay-spool-writer", daemon=True)
        self._writer.start()

    def close(self) -> None:
        if self._writer is not None:
            self._ops.put(None)
            self._writer.join()
            self._writer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._lock is not None:
            held = _DELIVERY_LOCKS.pop(self._lock, None)
            if held is not None:
                held.close()  # releases the flock
            self._lock = None

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def claim_delivery(self) -> None:
        """Become the one process that delivers from this file, or refuse to start.

        Two processes delivering from one SQLite file (`uvicorn --workers N`, or a second
        `serve`) would both send every event: `due` hands work out per process. The claim is
        an exclusive lock on a file beside the spool, held until the process ends (the kernel
        drops it even on SIGKILL); the command line's tools (`deadletter`, `spool`) never
        claim, so they work beside a running relay."""
        if self.path == ":memory:" or self._lock is not None:
            return
        key = str(Path(self.path).resolve())
        held = _DELIVERY_LOCKS.get(key)
        if held is None:
            held = open(self.path + ".deliver.lock", "a+")  # noqa: SIM115 - held while running
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.seek(0)
                holder = held.read().strip() or "another process"
                held.close()
                raise SpoolBusy(
                    f"the SQLite spool {self.path} is already delivered from by {holder}: "
                    f"one process per SQLite file (use spool = \"redis://...\" for several "
                    f"processes or uvicorn --workers)") from None
            held.truncate(0)
            held.write(f"pid {os.getpid()}\n")
            held.flush()
            _DELIVERY_LOCKS[key] = held
        self._lock = key

    # ---- the writer ------------------------------------------------------------------------

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        stop = False
        while not stop:
            try:
                # A routing process looks at the intake at least once a second: a wake-up
                # from another process may be lost, a failed commit leaves rows behind.
                first = self._ops.get(timeout=1.0 if self._routing else None)
            except queue.Empty:
                self._queue_route()
                continue
            if first is None:
                break
            ops = [first]
            while len(ops) < _GROUP:
                try:
                    more = self._ops.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                ops.append(more)
            results: list[tuple[_Op, Any, BaseException | None]] = []
            changes = conn.total_changes
            try:
                conn.execute("BEGIN IMMEDIATE")
                for op in ops:
                    results.append((op, *self._run_op(conn, op)))
                conn.execute("COMMIT")
            except Exception as exc:
                self._announce = False
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                # Cached visitor states (and vendor indexes) may hold changes rolled back.
                self._states.clear()
                self._forget_vendors()
                # No space: the callers hear it as such (a 503), and it is logged once a
                # minute, not once per request.
                told: BaseException = self._disk.failed(exc) if is_disk_full(exc) else exc
                for op in ops:
                    if not op.future.done():
                        op.future.set_exception(told)
                continue
            if conn.total_changes != changes:
                self._disk.wrote()
            if self._announce:
                self._announce = False
                self.on_new_work()
            if self._intake_added:
                self._intake_added = False
                self.on_new_intake()
                if self._routing:
                    self._queue_route()
            for op, result, error in results:
                if error is not None:
                    op.future.set_exception(error)
                else:
                    op.future.set_result(result)
        conn.close()

    def _run_op(self, conn: sqlite3.Connection, op: _Op) -> tuple[Any, BaseException | None]:
        """Run one operation in its own savepoint: a failing one must not sink its neighbours."""
        conn.execute("SAVEPOINT op")
        try:
            result = op.run(conn)
        except Exception as exc:
            if is_disk_full(exc):
                raise  # no op of this transaction can be stored (SQLite may have undone it)
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            self._states.clear()  # the op may have changed cached states
            self._forget_vendors()
            return None, exc
        conn.execute("RELEASE op")
        if isinstance(result, sqlite3.Cursor):  # never let one leave the writer's thread
            result.close()
            result = None
        return result, None

    async def _write(self, run: Callable[[sqlite3.Connection], T]) -> T:
        future: Future[T] = Future()
        self._ops.put(_Op(run, future))
        return await asyncio.wrap_future(future)

    async def _read(self, run: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            assert self._reader is not None
            with self._reader_lock:
                return run(self._reader)

        return await asyncio.to_thread(locked)

    # ---- the intake and the rules stage -----------------------------------------------------

    async def append(self, site: str, messages: list[dict[str, Any]],
                     context: RequestContext, *, wait: bool = False) -> str:
        """One row for the request, committed with whatever else the writer has queued."""
        data = orjson.dumps(messages)
        ctx = context.to_json()
        received_at = time.time()

        def run(conn: sqlite3.Connection) -> str:
            cursor = conn.execute(
                "INSERT INTO intake (site, received_at, context, messages, wait) "
                "VALUES (?, ?, ?, ?, ?)", (site, received_at, ctx, data, int(wait)))
            self._intake_added = True
            rowid = cursor.lastrowid
            cursor.close()
            return str(rowid)

        return await self._write(run)

    async def routed(self, ticket: str) -> IngestResult | None:
        def read(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT result, failed FROM intake WHERE id=?",
                               (int(ticket),)).fetchone()
            if row is None or (row[0] is None and row[1] is None):
                return None
            return bytes(row[0]) if row[0] is not None else b"{}"

        raw = await self._read(read)
        if raw is None:
            return None
        await self._write_many("DELETE FROM intake WHERE id=? AND failed IS NULL",
                               [(int(ticket),)])
        return IngestResult.from_json(raw)

    async def alias(self, site: str, anonymous_id: str) -> str | None:
        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT visitor_id FROM aliases WHERE site=? AND anonymous_id=?",
                               (site, anonymous_id)).fetchone()
            return None if row is None else str(row[0])

        return await self._read(run)

    def route_intake(self) -> None:
        self._routing = True
        self._queue_route()  # what an earlier process accepted and did not route

    def kick_intake(self) -> None:
        if self._routing:
            self._queue_route()

    def _queue_route(self) -> None:
        if not self._route_queued:
            self._route_queued = True
            self._ops.put(_Op(self._route, Future()))

    def _route(self, conn: sqlite3.Connection) -> int:
        """The rules stage, one bounded step: fold the oldest intake rows into stored events
        and work exactly as a direct `ingest` would, each row deleted (or, for a sender that
        waits, answered) in this same transaction. A row the fold fails on is marked failed
        and kept, so one bad row never stops the rows behind it."""
        self._route_queued = False
        rows = conn.execute(
            "SELECT id, site, received_at, context, messages, wait FROM intake "
            "WHERE result IS NULL AND failed IS NULL ORDER BY id LIMIT ?",
            (_ROUTE_ROWS,)).fetchall()
        folded = 0
        done: list[tuple[int]] = []
        for row_id, site, received_at, ctx, data, wait in rows:
            messages = orjson.loads(data)
            conn.execute("SAVEPOINT route_row")
            try:
                result = self._ingest(conn, site, messages, RequestContext.from_json(ctx),
                                      received_at)
            except Exception as exc:
                if is_disk_full(exc):
                    # Not the row's fault: it stays in the intake, routed once there is room.
                    raise
                conn.execute("ROLLBACK TO route_row")
                conn.execute("RELEASE route_row")
                self._states.clear()
                self._forget_vendors()  # a vendor index the row gave was rolled back with it
                log.exception("rules stage: intake row %d could not be routed; kept as "
                              "failed", row_id)
                conn.execute("UPDATE intake SET failed=? WHERE id=?",
                             (f"{type(exc).__name__}: {exc}"[:500], row_id)).close()
                continue
            conn.execute("RELEASE route_row")
            if wait:
                conn.execute("UPDATE intake SET result=? WHERE id=?",
                             (result.to_json(), row_id)).close()
            else:
                done.append((row_id,))
            folded += len(messages)
            if folded >= _ROUTE_MESSAGES:
                break
        if done:
            conn.executemany("DELETE FROM intake WHERE id=?", done).close()
        if len(rows) == _ROUTE_ROWS or folded >= _ROUTE_MESSAGES:
            self._queue_route()  # more behind these: the next step after queued appends
        return folded

    # ---- ingest ----------------------------------------------------------------------------

    async def ingest(self, site: str, messages: list[dict[str, Any]],
                     context: RequestContext) -> IngestResult:
        """Store accepted messages as the ingest rules decide (deduplicated, enriched, with
        their delivery work), in one transaction of the writer."""
        received_at = time.time()
        return await self._write(
            lambda conn: self._ingest(conn, site, messages, context, received_at))

    def _state(self, conn: sqlite3.Connection, site: str, visitor: str) -> VisitorState:
        key = (site, visitor)
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
            return state
        row = conn.execute("SELECT state FROM visitors WHERE site=? AND visitor_id=?",
                           (site, visitor)).fetchone()
        state = VisitorState.from_dict(orjson.loads(row[0])) if row else VisitorState()
        self._states[key] = state
        if len(self._states) > _STATE_CACHE:
            self._states.popitem(last=False)
        return state

    def _ingest(self, conn: sqlite3.Connection, site: str, messages: list[dict[str, Any]],
                context: RequestContext, received_at: float) -> IngestResult:
        plan = self.rules.fold(site, messages, context, _Snapshot(self, conn, site),
                               received_at)
        conn.executemany("INSERT OR REPLACE INTO aliases VALUES (?, ?, ?)",
                         [(site, a, v) for a, v in plan.aliases.items()])
        conn.executemany("INSERT OR REPLACE INTO users (site, user_id, visitor_id, strong) "
                         "VALUES (?, ?, ?, ?)",
                         [(site, u, b.visitor_id, int(b.strong)) for u, b in plan.users.items()])
        conn.executemany(
            "INSERT OR REPLACE INTO orders (site, order_id, message_id, received_at, vendors) "
            "VALUES (?, ?, ?, ?, ?)",
            [(site, order_id, record.message_id, received_at,
              None if record.vendors is None else orjson.dumps(sorted(record.vendors)))
             for order_id, record in plan.orders.items()])
        work: list[tuple[int | None, str, int]] = []
        for stored in plan.stored:
            event = stored.event
            cursor = conn.execute(
                "INSERT INTO messages (site, message_id, visitor_id, received_at, data) "
                "VALUES (?, ?, ?, ?, ?)",
                (site, event.message_id, stored.visitor_id, received_at,
                 orjson.dumps(event.to_dict())))
            if stored.vendors:
                owed = 0
                for vendor in stored.vendors:
                    owed |= 1 << self._vendor(conn, vendor)
                work.append((cursor.lastrowid, site, owed))
        if work:
            conn.executemany("INSERT INTO work (message, site, owed) VALUES (?, ?, ?)", work)
        if plan.notes:
            conn.executemany("INSERT INTO notes (site, message_id, at, note, order_id) VALUES "
                             "(?, ?, ?, ?, ?)",
                             [(site, m, received_at, note, order)
                              for m, note, order in plan.notes])
        conn.executemany("INSERT OR REPLACE INTO visitors VALUES (?, ?, ?, ?)",
                         [(site, visitor, orjson.dumps(state.to_dict()), received_at)
                          for visitor, state in plan.states.items()])
        for visitor, state in plan.states.items():
            self._states[(site, visitor)] = state  # the fold may have replaced the object
        if plan.work:
            self._announce = True
        return plan.result

    # ---- vendors ---------------------------------------------------------------------------

    def _remember(self, index: int, name: str) -> None:
        with self._vendors_lock:
            self._vendor_index[name], self._vendor_names[index] = index, name

    def _forget_vendors(self) -> None:
        with self._vendors_lock:
            self._vendor_index.clear()
            self._vendor_names.clear()

    def _reload_vendors(self, conn: sqlite3.Connection) -> None:
        for index, name in conn.execute("SELECT idx, name FROM vendors").fetchall():
            self._remember(index, name)

    def _vendor(self, conn: sqlite3.Connection, name: str) -> int:
        """The vendor's bit index, given one now if it has none (in the writer only)."""
        index = self._vendor_index.get(name)
        if index is not None:
            return index
        row = conn.execute("SELECT idx FROM vendors WHERE name=?", (name,)).fetchone()
        if row is None:
            index = conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM vendors").fetchone()[0]
            if index >= _MAX_VENDORS:
                raise RuntimeError(f"spool: more than {_MAX_VENDORS} vendors in one file")
            conn.execute("INSERT INTO vendors (idx, name) VALUES (?, ?)", (index, name)).close()
        else:
            index = row[0]
        self._remember(index, name)
        return int(index)

    def _index_of(self, conn: sqlite3.Connection, name: str) -> int | None:
        """The vendor's bit index, None if the file never had work for it (any thread)."""
        if name not in self._vendor_index:
            self._reload_vendors(conn)  # another process may have named it
        return self._vendor_index.get(name)

    def _name_of(self, conn: sqlite3.Connection, index: int) -> str:
        if index not in self._vendor_names:
            self._reload_vendors(conn)
        try:
            return self._vendor_names[index]
        except KeyError:
            raise KeyError(f"spool: no vendor has index {index} (a work id from elsewhere?)") \
                from None

    # ---- delivery --------------------------------------------------------------------------

    async def due(self, site: str, vendor: str, now: float, limit: int) -> list[OutboxRow]:
        """Pending work whose time has come, in visitor order (`seq`), skipping any visitor
        whose earlier work is still waiting for a retry (a vendor receives each visitor's
        events in order): the vendor's bits in `work` past its cursor, merged with its
        pending `outbox` rows. One read transaction, so both halves see one moment."""
        key = (site, vendor)

        def run(conn: sqlite3.Connection) -> list[OutboxRow]:
            index = self._index_of(conn, vendor)
            if index is None:
                return []
            bit = 1 << index
            picked: list[tuple[int, OutboxRow]] = []
            conn.execute("BEGIN")
            try:
                low = self._cursor.get(key, 0)
                first = conn.execute(
                    "SELECT message FROM work WHERE message >= ? AND site = ? AND owed & ? "
                    "ORDER BY message LIMIT 1", (low, site, bit)).fetchone()
                if first is None:
                    # None owed at all: later work can only be for a newer message.
                    top = conn.execute("SELECT MAX(id) FROM messages").fetchone()[0] or 0
                    self._cursor[key] = max(low, top + 1)
                else:
                    self._cursor[key] = first[0]
                    for r in conn.execute(
                            """
                            SELECT w.message, m.visitor_id, m.received_at, m.data
                            FROM work w JOIN messages m ON m.id = w.message
                            WHERE w.message >= ? AND w.site = ? AND w.owed & ?
                              AND NOT EXISTS (
                                SELECT 1 FROM outbox p
                                WHERE p.site = ? AND p.vendor = ? AND p.visitor_id = m.visitor_id
                                  AND p.state = 0 AND p.next_at > 0 AND p.seq < w.message * 2
                                  AND p.next_at > ?)
                            ORDER BY w.message LIMIT ?
                            """, (first[0], site, bit, site, vendor, now, limit)):
                        picked.append((r[0] * 2, OutboxRow(
                            id=work_id(r[0], index), site=site, vendor=vendor, visitor_id=r[1],
                            attempts=0, sent=0, created_at=r[2],
                            event=StoredEvent.from_dict(orjson.loads(r[3])))))
                for r in conn.execute(
                        """
                        SELECT o.seq, o.message, o.part, o.visitor_id, o.attempts, o.sent,
                               o.created_at, m.data, o.error
                        FROM outbox o JOIN messages m ON m.id = o.message
                        WHERE o.site = ? AND o.vendor = ? AND o.state = 0 AND o.next_at <= ?
                          AND NOT EXISTS (
                            SELECT 1 FROM outbox p
                            WHERE p.site = o.site AND p.vendor = o.vendor
                              AND p.visitor_id = o.visitor_id AND p.state = 0 AND p.next_at > 0
                              AND p.seq < o.seq AND p.next_at > ?)
                        ORDER BY o.seq, o.id LIMIT ?
                        """, (site, vendor, now, now, limit)):
                    picked.append((r[0], OutboxRow(
                        id=work_id(r[1], index, r[2]), site=site, vendor=vendor,
                        visitor_id=r[3], attempts=r[4], sent=r[5], created_at=r[6],
                        event=StoredEvent.from_dict(orjson.loads(r[7])), error=r[8] or "",
                        part=r[2])))
            finally:
                conn.execute("COMMIT")
            picked.sort(key=lambda item: item[0])  # stable: a part after its event's row
            return [row for _, row in picked[:limit]]

        return await self._read(run)

    async def next_due_at(self, site: str, vendor: str) -> float | None:
        def run(conn: sqlite3.Connection) -> float | None:
            index = self._index_of(conn, vendor)
            if index is None:
                return None
            if conn.execute("SELECT 1 FROM work WHERE message >= ? AND site = ? AND owed & ? "
                            "LIMIT 1", (self._cursor.get((site, vendor), 0), site,
                                        1 << index)).fetchone():
                return 0.0
            row = conn.execute("SELECT MIN(next_at) FROM outbox WHERE site=? AND vendor=? "
                               "AND state=0", (site, vendor)).fetchone()
            return row[0] if row else None

        return await self._read(run)

    async def _write_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            # Nothing of the writer's connection may leave its thread: a cursor handed back
            # through the future would be finalised on the event loop's thread, which sqlite3
            # answers with "bad parameter or other API misuse" on a later statement.
            conn.executemany(sql, rows).close()

        await self._write(run)

    def _pair(self, conn: sqlite3.Connection, ident: int, now: float
              ) -> tuple[int, str, int | None]:
        """(message, vendor, part) of a work id, its `outbox` row made first if the work was
        still a bit of its `work` row (in the writer: the pair now needs a row of its own)."""
        message, index, part = split_work_id(ident)
        vendor = self._name_of(conn, index)
        if part is None and conn.execute(
                "UPDATE work SET owed = owed & ~? WHERE message = ? AND owed & ?",
                (1 << index, message, 1 << index)).rowcount:
            conn.execute(
                "INSERT OR IGNORE INTO outbox (message, site, vendor, visitor_id, created_at, "
                "updated_at, seq) SELECT id, site, ?, visitor_id, received_at, ?, id * 2 "
                "FROM messages WHERE id = ?", (vendor, now, message)).close()
            conn.execute("DELETE FROM work WHERE message = ? AND owed = 0 AND done IS NULL",
                         (message,)).close()
        return message, vendor, part

    def _update_pairs(self, conn: sqlite3.Connection, ids: list[int], sets: str,
                      args: tuple[Any, ...], now: float) -> None:
        rows = [(*args, *self._pair(conn, ident, now)) for ident in ids]
        conn.executemany(f"UPDATE outbox SET {sets} WHERE message=? AND vendor=? AND part IS ?",
                         rows).close()

    async def mark_done(self, ids: list[int], *, skipped: bool = False,
                        status: int | None = None, request: str = "",
                        response: str = "") -> None:
        """Common-path work: its bit cleared and one `exchanges` row for the whole request,
        named in each message's `done`; an `outbox` pair: its row updated as before."""
        now = time.time()
        state = SKIPPED if skipped else DELIVERED
        request, response = kept_exchange(state, request, response)

        def run(conn: sqlite3.Connection) -> None:
            exchanges: dict[tuple[str, int], list[int]] = {}
            others: list[int] = []
            for ident in ids:
                message, index, part = split_work_id(ident)
                row = None if part is not None else conn.execute(
                    "SELECT site FROM work WHERE message = ? AND owed & ?",
                    (message, 1 << index)).fetchone()
                if row is None:
                    others.append(ident)
                else:
                    exchanges.setdefault((row[0], index), []).append(message)
            for (site, index), messages in exchanges.items():
                cursor = conn.execute(
                    "INSERT INTO exchanges (site, vendor, state, at, count, status, request, "
                    "response) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (site, self._name_of(conn, index), state, now, len(messages), status,
                     request or None, response or None))
                exchange = cursor.lastrowid
                cursor.close()
                conn.executemany(
                    "UPDATE work SET owed = owed & ~?, done = COALESCE(done, '') || ?, "
                    "last_exchange = ? WHERE message = ?",
                    [(1 << index, f"{index}:{state}:{exchange} ", exchange, m)
                     for m in messages]).close()
            if others:
                self._update_pairs(conn, others, "state=?, status=?, attempts=attempts+1, "
                                   "updated_at=?, error=NULL, request=?, response=?",
                                   (state, status, now, request or None, response or None), now)

        await self._write(run)

    async def mark_progress(self, row_id: int, sent: int) -> None:
        now = time.time()
        await self._write(lambda conn: self._update_pairs(
            conn, [row_id], "sent=?, updated_at=?", (sent, now), now))

    async def mark_retry(self, ids: list[int], *, next_at: float, status: int | None,
                         error: str, request: str = "", response: str = "") -> None:
        now = time.time()
        request, response = kept_exchange(PENDING, request, response)
        await self._write(lambda conn: self._update_pairs(
            conn, ids, "attempts=attempts+1, next_at=?, status=?, error=?, updated_at=?, "
            "request=?, response=?",
            (next_at, status, error, now, request or None, response or None), now))

    async def mark_dead(self, ids: list[int], *, status: int | None, error: str,
                        response: str = "", request: str = "") -> None:
        now = time.time()
        request, response = kept_exchange(DEAD, request, response)
        await self._write(lambda conn: self._update_pairs(
            conn, ids, "state=?, attempts=attempts+1, status=?, error=?, response=?, "
            "request=?, updated_at=?", (DEAD, status, error, response, request, now), now))

    async def mark_part_dead(self, row_id: int, part: int, *, status: int | None, error: str,
                             response: str = "", request: str = "") -> None:
        """A row of its own for the part, beside the event's work (which goes on, as a bit
        or as its own row). Met twice (a restart between this and the caller's progress),
        the first letter stands: the unique `outbox_work` index ignores the second."""
        now = time.time()
        request, response = kept_exchange(DEAD, request, response)

        def run(conn: sqlite3.Connection) -> None:
            message, index, _ = split_work_id(row_id)
            vendor = self._name_of(conn, index)
            work_id(message, index, part)  # a part a work id can name, or raise
            # After every work row made so far, as a new row was before (`seq`).
            seq = 2 * (conn.execute("SELECT MAX(id) FROM messages").fetchone()[0] or 0) + 1
            letter = (DEAD, now, status, error, response, request, part, seq)
            if conn.execute("SELECT 1 FROM work WHERE message = ? AND owed & ?",
                            (message, 1 << index)).fetchone():
                source = ("SELECT id, site, ?, visitor_id, ?, 1, 0, 0, received_at, ?, ?, ?, "
                          "?, ?, ?, ? FROM messages WHERE id = ?")
                args: tuple[Any, ...] = (vendor, *letter, message)
            else:
                source = ("SELECT message, site, vendor, visitor_id, ?, attempts + 1, 0, 0, "
                          "created_at, ?, ?, ?, ?, ?, ?, ? FROM outbox WHERE message = ? AND "
                          "vendor = ? AND part IS NULL")
                args = (*letter, message, vendor)
            conn.execute(
                "INSERT OR IGNORE INTO outbox (message, site, vendor, visitor_id, state, "
                "attempts, sent, next_at, created_at, updated_at, status, error, response, "
                "request, part, seq) " + source, args).close()

        await self._write(run)

    # ---- dead letters, statistics, retention ------------------------------------------------

    def _letters(self, conn: sqlite3.Connection, where: LetterFilter
                 ) -> tuple[str, list[Any]]:
        """`where` as the condition on outbox rows (alias `o`) that are dead letters (only
        `outbox` holds them: a pair is moved there before it is marked dead). A dead letter's
        id is a work id, no column: it names the row by (message, vendor, part)."""
        sql = "o.state = ?"
        args: list[Any] = [DEAD]
        for column, value in (("o.site", where.site), ("o.vendor", where.vendor),
                              ("o.status", where.status)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        if where.dead_id is not None:
            message, index, part = split_work_id(where.dead_id)
            sql += " AND o.message = ? AND o.vendor = ? AND o.part IS ?"
            args += [message, self._vendor_names_or(conn, index), part]
        if where.since is not None:
            sql += " AND o.updated_at >= ?"
            args.append(where.since)
        return sql, args

    async def dead_letters(self, where: LetterFilter | None = None, *,
                           vendor: str | None = None, since: float | None = None,
                           dead_id: int | None = None) -> list[DeadLetter]:
        chosen = LetterFilter.given(where, vendor=vendor, since=since, dead_id=dead_id)

        def run(conn: sqlite3.Connection) -> list[DeadLetter]:
            condition, args = self._letters(conn, chosen)
            sql = ("SELECT o.message, o.site, o.vendor, o.visitor_id, o.attempts, o.status, "
                   "o.error, o.response, o.updated_at, m.data, o.request, o.part FROM outbox o "
                   "JOIN messages m ON m.id = o.message WHERE " + condition)
            return [
                DeadLetter(id=work_id(r[0], self._index_of(conn, r[2]) or 0, r[11]),
                           site=r[1], vendor=r[2], visitor_id=r[3], attempts=r[4],
                           status=r[5], error=r[6] or "", response=r[7] or "", failed_at=r[8],
                           event=StoredEvent.from_dict(orjson.loads(r[9])), request=r[10] or "",
                           part=r[11])
                for r in conn.execute(sql + " ORDER BY o.seq, o.id", args).fetchall()
            ]

        return await self._read(run)

    async def replay(self, where: LetterFilter | None = None, *, vendor: str | None = None,
                     dead_id: int | None = None) -> int:
        """Put dead letters back in the queue (attempts and progress reset)."""
        chosen = LetterFilter.given(where, vendor=vendor, dead_id=dead_id)

        def run(conn: sqlite3.Connection) -> int:
            condition, args = self._letters(conn, chosen)
            sql = ("UPDATE outbox AS o SET state=?, attempts=0, sent=0, next_at=0, "
                   "created_at=?, error=NULL WHERE " + condition)
            count = conn.execute(sql, [PENDING, time.time(), *args]).rowcount
            if count:
                self._announce = True
            return count

        return await self._write(run)

    async def stats(self) -> SpoolStats:
        def run(conn: sqlite3.Connection) -> SpoolStats:
            stats = SpoolStats()
            counts: dict[tuple[str, int], list[Any]] = {}

            def count(vendor: str, state: int, n: int, oldest: float | None) -> None:
                entry = counts.setdefault((vendor, state), [0, None])
                entry[0] += n or 0
                if oldest is not None and (entry[1] is None or oldest < entry[1]):
                    entry[1] = oldest

            for vendor, state, n, oldest in conn.execute(
                    "SELECT vendor, state, COUNT(*), MIN(created_at) FROM outbox "
                    "GROUP BY vendor, state"):
                count(vendor, state, n, oldest)
            for vendor, state, n in conn.execute(
                    "SELECT vendor, state, SUM(count) FROM exchanges GROUP BY vendor, state"):
                count(vendor, state, n, None)
            for (_, index), (n, first) in self._owed(conn).items():
                oldest = conn.execute("SELECT received_at FROM messages WHERE id=?",
                                      (first,)).fetchone()
                count(self._name_of(conn, index), PENDING, n, oldest[0] if oldest else None)
            for (vendor, state), (n, oldest) in sorted(counts.items()):
                stats.add(vendor, state, n, oldest)
            stats.messages = conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
            pending, oldest, failed = conn.execute(
                "SELECT SUM(result IS NULL AND failed IS NULL), MIN(CASE WHEN result IS NULL "
                "AND failed IS NULL THEN received_at END), SUM(failed IS NOT NULL) FROM intake"
            ).fetchone()
            stats.intake, stats.intake_oldest = pending or 0, oldest
            stats.intake_failed = failed or 0
            stats.file_bytes = self.file_bytes()
            return stats

        return await self._read(run)

    @staticmethod
    def _owed(conn: sqlite3.Connection) -> dict[tuple[str, int], tuple[int, int]]:
        """Common-path queue per (site, vendor index): (count, first message), one pass over
        `work` grouped by site and bit mask (few distinct masks)."""
        out: dict[tuple[str, int], tuple[int, int]] = {}
        for site, owed, n, first in conn.execute(
                "SELECT site, owed, COUNT(*), MIN(message) FROM work WHERE owed != 0 "
                "GROUP BY site, owed").fetchall():
            index = 0
            while owed:
                if owed & 1:
                    before = out.get((site, index))
                    out[site, index] = (n, first) if before is None else (
                        before[0] + n, min(before[1], first))
                owed >>= 1
                index += 1
        return out

    def _vendor_names_or(self, conn: sqlite3.Connection, index: int) -> str:
        """A vendor's name by index, or a name no row has (an id from another file)."""
        try:
            return self._name_of(conn, index)
        except KeyError:
            return f"\x00unknown-{index}"

    def file_bytes(self) -> int:
        """The spool's size on disk: the database file and its write-ahead log."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):  # no WAL yet, or no file (":memory:")
                total += Path(self.path + suffix).stat().st_size
        return total

    async def prune(self, older_than: float, *, chunk: int = 2000) -> int:
        """Forget what the retention's cut says (`Retention.cut`: finished work, messages no
        work refers to any more, visitors with their aliases and user bindings, orders, notes,
        unread answers); returns the finished (message, vendor) work forgotten (`outbox` rows,
        and the deliveries the `exchanges` removed recorded).

        Deletes go in chunks, each its own write, so a large backlog never holds the single
        writer (and with it every ingest answer) for long. Dedup remembers a messageId as long
        as its message is kept.
        """
        cut = self.retention.cut(older_than, time.time())

        def outbox(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE state IN (?, ?, ?) "
                "AND updated_at < ? LIMIT ?)", (*FINISHED, cut.finished, chunk)).rowcount

        def exchanges(conn: sqlite3.Connection) -> tuple[int, int]:
            # (rows, the (message, vendor) deliveries they recorded)
            rows = conn.execute("SELECT id, count FROM exchanges WHERE at < ? ORDER BY id "
                                "LIMIT ?", (cut.finished, chunk)).fetchall()
            conn.executemany("DELETE FROM exchanges WHERE id = ?",
                             [(r[0],) for r in rows]).close()
            return len(rows), sum(r[1] for r in rows)

        def work(conn: sqlite3.Connection) -> int:
            # Nothing owed, and every exchange it names is gone (exchange ids only grow).
            return conn.execute(
                "DELETE FROM work WHERE message IN (SELECT message FROM work WHERE owed = 0 "
                "AND last_exchange < COALESCE((SELECT MIN(id) FROM exchanges), 9e18) LIMIT ?)",
                (chunk,)).rowcount

        def messages(conn: sqlite3.Connection) -> int:
            # Every message below the lowest message any work (a `work` row or an outbox row)
            # still names has no work left: a range on the primary key, not a scan per
            # message. (Not the message of the lowest outbox id: a part dead-lettered alone
            # or a backfill claim is a newer row for an older message.) `outbox_work` leads
            # with `message`: MIN is a seek. The newest message always stays: its rowid is
            # never given again, which `due`'s cursors rely on.
            return conn.execute(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE id < "
                "MIN(COALESCE((SELECT MIN(message) FROM outbox), 9e18), "
                "COALESCE((SELECT MIN(message) FROM work), 9e18), "
                "COALESCE((SELECT MAX(id) FROM messages), 0)) "
                "AND received_at < ? LIMIT ?)", (cut.finished, chunk)).rowcount

        def visitors(conn: sqlite3.Connection) -> int:
            # A visitor not seen within retention is forgotten with its aliases and user
            # bindings: queued work never needs it (each event carries its enrichment).
            gone = conn.execute("SELECT site, visitor_id FROM visitors WHERE updated_at < ? "
                                "LIMIT ?", (cut.visitors, chunk)).fetchall()
            for table in ("aliases", "users", "visitors"):
                conn.executemany(f"DELETE FROM {table} WHERE site = ? AND visitor_id = ?",
                                 gone).close()
            for key in gone:
                self._states.pop((key[0], key[1]), None)
            return len(gone)

        def orders(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM orders WHERE (site, order_id) IN (SELECT site, order_id FROM orders "
                "WHERE received_at < ? LIMIT ?)", (cut.finished, chunk)).rowcount

        def answers(conn: sqlite3.Connection) -> int:
            # Answers kept for a server request whose sender went away before reading them,
            # and failed rows past retention (logged when they failed).
            return conn.execute(
                "DELETE FROM intake WHERE id IN (SELECT id FROM intake WHERE (result IS NOT "
                "NULL OR failed IS NOT NULL) AND received_at < ? LIMIT ?)",
                (cut.answers, chunk)).rowcount

        def notes(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM notes WHERE rowid IN (SELECT rowid FROM notes WHERE at < ? "
                "LIMIT ?)", (cut.finished, chunk)).rowcount

        removed = 0
        while (count := await self._write(outbox)) > 0:
            removed += count
        while True:
            rows, deliveries = await self._write(exchanges)
            if not rows:
                break
            removed += deliveries
        while await self._write(work) > 0:
            pass
        for step in (messages, visitors, orders, notes, answers):
            while await self._write(step) > 0:
                pass
        return removed

    # ---- traces and backfill ---------------------------------------------------------------

    async def find_messages(self, site: str, *, message_id: str | None = None,
                            order_id: str | None = None, visitor_id: str | None = None,
                            limit: int = 20) -> list[MessageRecord]:
        """Stored messages (newest first) with their work per vendor and their notes."""
        def run(conn: sqlite3.Connection) -> list[MessageRecord]:
            ids: list[str] = []
            if message_id is not None:
                ids = [message_id]
            elif order_id is not None:
                ids = [r[0] for r in conn.execute(
                    "SELECT message_id FROM orders WHERE site=? AND order_id=?",
                    (site, order_id))]
                # Copies dropped as duplicates of that order were noted under their own ids.
                ids += [r[0] for r in conn.execute(
                    "SELECT message_id FROM notes WHERE site=? AND order_id=? ORDER BY at",
                    (site, order_id))]
            query = ("SELECT id, message_id, visitor_id, received_at, data FROM messages "
                     "WHERE site=? AND ")
            if visitor_id is not None:
                # No index by visitor (it would cost every ingest): newest first, stopping
                # at `limit`, so an active visitor is found at once, an old one in a scan.
                rows = conn.execute(query + "visitor_id=? ORDER BY id DESC LIMIT ?",
                                    (site, visitor_id, limit)).fetchall()
            else:
                rows = [row for m in dict.fromkeys(ids)
                        for row in conn.execute(query + "message_id=?", (site, m))]
            found = {r[1] for r in rows}
            records = [self._record(conn, site, r) for r in rows]
            for missing in dict.fromkeys(ids):  # not stored, but noted
                if missing not in found and (
                        noted := noted_only(site, missing, self._notes(conn, site, missing))):
                    records.append(noted)
                    found.add(missing)
            if message_id is not None and message_id not in found:
                records += self._in_intake(conn, site, message_id)
            return newest_first(records, limit)

        return await self._read(run)

    @staticmethod
    def _in_intake(conn: sqlite3.Connection, site: str, message_id: str
                   ) -> list[MessageRecord]:
        """A message still in the intake: accepted, not yet routed (a scan, as the intake
        holds only what the rules stage has not reached)."""
        for received_at, data, failed in conn.execute(
                "SELECT received_at, messages, failed FROM intake WHERE site=? AND "
                "result IS NULL ORDER BY id LIMIT 100000", (site,)):
            if message_id.encode() not in data:
                continue
            for message in orjson.loads(data):
                if str(message.get("messageId")) == message_id:
                    return [in_intake(site, message_id, received_at, failed)]
        return []

    @staticmethod
    def _notes(conn: sqlite3.Connection, site: str, message_id: str) -> list[tuple[float, str]]:
        return [(r[0], r[1]) for r in conn.execute(
            "SELECT at, note FROM notes WHERE site=? AND message_id=? ORDER BY at",
            (site, message_id))]

    def _common(self, conn: sqlite3.Connection, message: int, received_at: float
                ) -> list[WorkRecord]:
        """A message's common-path work (its `work` row) as `work_record`s: each fate with
        the exchange it names (gone past retention: the state alone), then the queued bits."""
        row = conn.execute("SELECT owed, done FROM work WHERE message=?", (message,)).fetchone()
        if row is None:
            return []
        out: list[WorkRecord] = []
        for index, (state, exchange) in _done_entries(row[1]).items():
            found = conn.execute("SELECT status, request, response, at FROM exchanges "
                                 "WHERE id=?", (exchange,)).fetchone()
            status, request, response, at = found if found is not None else (None, "", "", 0.0)
            out.append(work_record(self._name_of(conn, index), state_name(state), attempts=1,
                                   status=status, request=request or "",
                                   response=response or "", updated_at=at))
        owed, index = row[0], 0
        while owed:
            if owed & 1:
                out.append(work_record(self._name_of(conn, index), state_name(PENDING),
                                       updated_at=received_at))
            owed >>= 1
            index += 1
        return out

    def _record(self, conn: sqlite3.Connection, site: str, row: Any) -> MessageRecord:
        # The common path first: a vendor's outbox row, where it has one, is the newer word.
        rows: list[tuple[int | None, WorkRecord]] = [
            (None, record) for record in self._common(conn, row[0], row[3])]
        rows += [
            (r[9], work_record(r[0], state_name(r[1]), attempts=r[2], next_at=r[3],
                               status=r[4], error=r[5] or "", request=r[6] or "",
                               response=r[7] or "", updated_at=r[8]))
            for r in conn.execute(
                "SELECT vendor, state, attempts, next_at, status, error, request, response, "
                "updated_at, part FROM outbox WHERE message=? ORDER BY id", (row[0],))]
        return MessageRecord(site, row[1], row[2], row[3],
                             StoredEvent.from_dict(orjson.loads(row[4])), gather_work(rows),
                             self._notes(conn, site, row[1]))

    async def history(self, site: str, *, since: float, until: float, cursor: int = 0,
                      limit: int = 500) -> tuple[list[HistoryItem], int]:
        """Pages of stored messages in acceptance (rowid) order; the cursor is the last rowid."""
        def run(conn: sqlite3.Connection) -> tuple[list[HistoryItem], int]:
            rows = conn.execute(
                "SELECT id, message_id, visitor_id, received_at, data FROM messages "
                "WHERE site=? AND id > ? AND received_at >= ? AND received_at < ? "
                "ORDER BY id LIMIT ?", (site, cursor, since, until, limit)).fetchall()
            items = []
            for r in rows:
                vendors = {w.vendor: w.state for w in self._common(conn, r[0], r[3])}
                vendors.update({v: state_name(st) for v, st in conn.execute(
                    "SELECT vendor, state FROM outbox WHERE message=? AND part IS NULL",
                    (r[0],))})
                items.append(HistoryItem(r[1], r[2], r[3],
                                         StoredEvent.from_dict(orjson.loads(r[4])), vendors))
            return items, (rows[-1][0] if rows else cursor)

        return await self._read(run)

    async def claim_backfill(self, site: str, vendor: str,
                             items: list[HistoryItem]) -> list[str]:
        """One outbox row per (message, vendor), state BACKFILL: the unique index makes the
        claim atomic, and `due` never hands such a row to the live path."""
        def run(conn: sqlite3.Connection) -> list[str]:
            now = time.time()
            mine: list[str] = []
            index = self._vendor(conn, vendor)
            for item in items:
                row = conn.execute("SELECT id FROM messages WHERE site=? AND message_id=?",
                                   (site, item.message_id)).fetchone()
                if row is None:
                    continue  # pruned meanwhile
                # The live path's work for the vendor on the common path (a bit still owed,
                # or a fate in `done`) has no outbox row: its state is read from `work`.
                common = conn.execute("SELECT owed, done FROM work WHERE message=?",
                                      (row[0],)).fetchone()
                live: str | None = None
                if common is not None:
                    done = _done_entries(common[1])
                    if common[0] >> index & 1:
                        live = state_name(PENDING)
                    elif index in done:
                        live = state_name(done[index][0])
                if live is not None:
                    created, state = False, live
                else:
                    cursor = conn.execute(
                        "INSERT OR IGNORE INTO outbox (message, site, vendor, visitor_id, "
                        "state, created_at, updated_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (row[0], site, vendor, item.visitor_id, BACKFILL, now, now, row[0] * 2))
                    created, state = cursor.rowcount > 0, None
                    cursor.close()
                    if not created:
                        found = conn.execute(
                            "SELECT state FROM outbox WHERE message=? AND vendor=? AND "
                            "part IS NULL", (row[0], vendor)).fetchone()
                        state = None if found is None else state_name(found[0])
                if backfill_owns(created, state):
                    mine.append(item.message_id)
            return mine

        return await self._write(run)

    async def settle_backfill(self, site: str, vendor: str, message_id: str, *, state: int,
                              status: int | None = None, error: str = "", request: str = "",
                              response: str = "") -> None:
        request, response = kept_exchange(state, request, response)

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE outbox SET state=?, status=?, error=?, request=?, response=?, "
                "attempts=attempts+1, updated_at=? WHERE vendor=? AND state=? AND message = "
                "(SELECT id FROM messages WHERE site=? AND message_id=?)",
                (state, status, error or None, request or None, response or None, time.time(),
                 vendor, BACKFILL, site, message_id)).close()

        await self._write(run)

    async def vendor_figures(self, now: float) -> list[VendorFigures]:
        """Grouped queries on the indexes delivery already keeps: the common-path queue from
        `work` (grouped by bit mask), its fates from `exchanges` (by time), and the
        exceptional pairs from `outbox` (outbox_pending, outbox_done, outbox_waiting)."""
        hour, minute = now - FIGURE_HOUR, now - FIGURE_MINUTE

        def run(conn: sqlite3.Connection) -> list[VendorFigures]:
            figures: dict[tuple[str, str], VendorFigures] = {}

            def of(site: str, vendor: str) -> VendorFigures:
                return figures.setdefault((site, vendor), VendorFigures(site, vendor))

            for (site, index), (count, first) in self._owed(conn).items():
                row = of(site, self._name_of(conn, index))
                row.queued += count
                oldest = conn.execute("SELECT received_at FROM messages WHERE id=?",
                                      (first,)).fetchone()
                if oldest is not None:
                    row.oldest_queued_at = oldest[0]
            for site, vendor, count, recent, last in conn.execute(
                    "SELECT site, vendor, SUM(count), SUM(CASE WHEN at >= ? THEN count END), "
                    "MAX(at) FROM exchanges WHERE at >= ? AND state = ? GROUP BY site, vendor",
                    (minute, hour, DELIVERED)):
                row = of(site, vendor)
                row.delivered_hour += count or 0
                row.sent_minute += recent or 0
                row.last_delivered_at = last
            for site, vendor, count, oldest, parked, next_retry in conn.execute(
                    "SELECT site, vendor, COUNT(*), MIN(created_at), SUM(next_at > ?), "
                    "MIN(CASE WHEN next_at > ? THEN next_at END) FROM outbox WHERE state = 0 "
                    "GROUP BY site, vendor", (now, now)):
                row = of(site, vendor)
                row.queued += count
                if row.oldest_queued_at is None or oldest < row.oldest_queued_at:
                    row.oldest_queued_at = oldest
                row.retry_waiting, row.next_retry_at = parked or 0, next_retry
            for site, vendor, state, count, recent, retried, last in conn.execute(
                    "SELECT site, vendor, state, COUNT(*), SUM(updated_at >= ?), "
                    "SUM(attempts > 1), MAX(updated_at) FROM outbox WHERE state IN (?, ?) "
                    "AND updated_at >= ? GROUP BY site, vendor, state",
                    (minute, DELIVERED, DEAD, hour)):
                row = of(site, vendor)
                row.sent_minute += recent or 0
                row.retried_hour += retried or 0
                if state == DELIVERED:
                    row.delivered_hour += count
                    row.last_delivered_at = max(last, row.last_delivered_at or 0.0)
                else:
                    row.dead_hour = count
            for site, vendor, count, recent in conn.execute(
                    "SELECT site, vendor, COUNT(*), SUM(updated_at >= ?) FROM outbox "
                    "WHERE state = 0 AND next_at > 0 AND updated_at >= ? GROUP BY site, vendor",
                    (minute, hour)):
                row = of(site, vendor)
                row.retried_hour += count
                row.sent_minute += recent or 0
            # SQLite answers the bare column (error) from the row holding MAX(updated_at).
            for site, vendor, error, at in conn.execute(
                    "SELECT site, vendor, error, MAX(updated_at) FROM outbox "
                    "WHERE state IN (0, ?) AND updated_at >= ? AND error IS NOT NULL "
                    "GROUP BY site, vendor", (DEAD, hour)):
                row = of(site, vendor)
                row.last_error, row.last_error_at = error, at
            return sorted(figures.values(), key=lambda f: (f.site, f.vendor))

        return await self._read(run)
