"""Run-time sampling: PII in the results of allowed statements, in columns nobody tagged.

`pgproxy scan` looks at a table when someone runs it; sampling looks at what agents actually
read. With `sampling.enabled`, the first `rows_per_result` rows of at most `results_per_second`
results per second (across all sessions) are copied as they pass: only the fields that are
untagged text-like columns of a table (the RowDescription names each field's table OID and
attnum), each cut to `max_value_bytes`. That copy is all the hot path does; the values go to one
worker process (spawned at start: Presidio's regular expressions would hold the interpreter lock
the event loop needs), which classifies them (classifiers/), adds each column's counts up over
every sample it has seen, and weighs them with the column's name as `pgproxy scan` does. When a
column's evidence first suggests tags, or suggests more than before, a `pii.detected` audit event
names the column (route database, schema, table, column, table OID, attnum), the entities with
how many sampled values held each, the values sampled and the tags suggested; never a value.
`pgproxy scan` shows these beside its own findings and `--write` adds them.

A result is sampled only when its rows reach the client unchanged: masked results are not (their
tagged columns are masked; the rest could be, but a masked statement was reviewed as one). A
sample is dropped, and counted, when the worker is behind by `queue_samples` samples. Off, no
worker runs and the relay makes a few attribute tests per result (one per message on its slower
path).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgproxy.analysis.schema import SYSTEM_SCHEMAS, Schema
from pgproxy.config import SamplingConfig

if TYPE_CHECKING:
    from pgproxy.audit import AuditLog

log = logging.getLogger("pgproxy.sampling")

# Relation kinds whose columns hold stored values (a view's columns come from its tables, which
# are found where agents read them, and by `pgproxy scan`).
_STORED = frozenset({"r", "p", "m", "f"})
_PLANS = 4096  # results' fields remembered per database (then forgotten at once)
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")


@dataclass(frozen=True, slots=True)
class SampledColumn:
    """An untagged text-like column of a table, as `pii.detected` names it."""

    database: str  # the route
    schema: str
    table: str
    column: str
    table_oid: int
    attnum: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.database, self.table_oid, self.attnum)


class RowSample:
    """The first rows of one result: the values of its sampled fields, copied as they pass."""

    __slots__ = ("_last", "codec", "columns", "limit", "max_bytes", "positions", "rows", "values")

    def __init__(self, fields: list[tuple[int, SampledColumn]], limit: int, max_bytes: int, codec: str) -> None:
        self.columns = [column for _, column in fields]
        self.positions = [position for position, _ in fields]
        self.values: list[list[bytes]] = [[] for _ in fields]
        self.rows = 0
        self.limit = limit
        self.max_bytes = max_bytes
        self.codec = codec
        self._last = self.positions[-1]

    def add(self, body: bytes) -> bool:
        """Copy one DataRow's sampled fields (NULLs skipped); True once `limit` rows are in. A
        malformed row ends the sample (the relay's own checks deal with it)."""
        try:
            if _I16.unpack_from(body, 0)[0] <= self._last:
                return True
            unpack = _I32.unpack_from
            pos = 2
            wanted = 0
            for index in range(self._last + 1):
                length = unpack(body, pos)[0]
                if index == self.positions[wanted]:
                    if length > 0:
                        self.values[wanted].append(body[pos + 4:pos + 4 + min(length, self.max_bytes)])
                    wanted += 1
                pos += 4 + max(length, 0)
        except struct.error:
            return True
        self.rows += 1
        return self.rows >= self.limit


# A result's columns (the relay's list) and the fields of it that may be sampled (None: none).
_Plan = tuple[list[tuple[int, int]], list[tuple[int, SampledColumn]] | None]

# A sample as it travels to the worker: (database, table oid, attnum, column name, encoding, values).
Payload = tuple[str, int, int, str, str, list[bytes]]


class Sampler:
    """One per proxy: the rate limit, which columns may be sampled, the queue and the worker."""

    def __init__(self, config: SamplingConfig, schema: Callable[[str], Schema | None], audit: AuditLog | None,
                 recognizers: Path | None) -> None:
        self.config = config
        self.schema = schema
        self.audit = audit
        self.recognizers = recognizers
        self.interval = 1.0 / config.results_per_second
        self.next_at = 0.0  # monotonic time the next sample may start
        self.pending: list[Payload] = []
        self.pending_samples = 0
        self.taken = 0  # results sampled
        self.dropped = 0  # samples dropped because the worker was behind
        self.classified = 0  # values the worker classified
        self.detected = 0  # pii.detected events recorded
        # Per database: the schema version, its sampleable columns, and each result's fields (by list).
        self._columns: dict[str, tuple[str, dict[tuple[int, int], SampledColumn], dict[int, _Plan]]] = {}
        self._wake = asyncio.Event()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # -- the relay's side (the event loop) ------------------------------------------------

    def due(self) -> bool:
        """Whether a result may be sampled now (the cheap test, made first)."""
        return time.monotonic() >= self.next_at

    def begin(self, database: str, columns: list[tuple[int, int]], codec: str | None) -> RowSample | None:
        """A sample of the result whose fields come from these (table oid, attnum) columns, when
        one is due and any field is an untagged text column of a table; it then counts against
        the rate. `codec` is the client encoding's Python codec (None: UTF-8)."""
        now = time.monotonic()
        if now < self.next_at:
            return None
        fields = self._fields(database, columns)
        if fields is None:
            return None
        self.next_at = now + self.interval
        self.taken += 1
        return RowSample(fields, self.config.rows_per_result, self.config.max_value_bytes, codec or "utf-8")

    def finish(self, sample: RowSample) -> None:
        """A sample is complete: queue what it copied for the worker."""
        added = [(c.database, c.table_oid, c.attnum, c.column, sample.codec, values)
                 for c, values in zip(sample.columns, sample.values, strict=True) if values]
        if not added:
            return
        if self.pending_samples >= self.config.queue_samples:
            self.dropped += 1
            return
        self.pending.extend(added)
        self.pending_samples += 1
        self._wake.set()

    def _fields(self, database: str, columns: list[tuple[int, int]]) -> list[tuple[int, SampledColumn]] | None:
        """The fields of a result with these columns that may be sampled (None: none may). Worked
        out once per list of columns: the relay's lists are the same objects for the same
        RowDescription or statement, so this is one dictionary lookup per result."""
        cached = self._cached(database)
        if cached is None:
            return None
        plans = cached[2]
        plan = plans.get(id(columns))
        if plan is not None and plan[0] is columns:  # the entry keeps the list alive: its id is not reused
            return plan[1]
        fields = [(i, found) for i, column in enumerate(columns)
                  if column[0] and (found := cached[1].get(column)) is not None] or None
        if len(plans) >= _PLANS:
            plans.clear()
        plans[id(columns)] = (columns, fields)
        return fields

    def _candidates(self, database: str) -> dict[tuple[int, int], SampledColumn]:
        cached = self._cached(database)
        return cached[1] if cached is not None else {}

    def _cached(self, database: str) -> tuple[str, dict[tuple[int, int], SampledColumn], dict[int, _Plan]] | None:
        """The route's sampleable columns and results' fields, for its current schema version."""
        schema = self.schema(database)
        if schema is None:
            return None
        cached = self._columns.get(database)
        if cached is None or cached[0] != schema.version:
            cached = self._columns[database] = (schema.version, self._find(database, schema), {})
        return cached

    @staticmethod
    def _find(database: str, schema: Schema) -> dict[tuple[int, int], SampledColumn]:
        """(table oid, attnum) -> column, for every untagged text-like column of a table of the
        route's schema."""
        found = {}
        for relation in schema.relations.values():
            if relation.kind not in _STORED or relation.schema in SYSTEM_SCHEMAS or relation.stale is not None:
                continue
            for column, attnum in zip(relation.columns, relation.attnums, strict=True):
                if column in relation.text_columns and not relation.tags.get(column):
                    found[(relation.oid, attnum)] = SampledColumn(database, relation.schema, relation.name, column,
                                                                 relation.oid, attnum)
        return found

    def column(self, database: str, table_oid: int, attnum: int) -> SampledColumn | None:
        return self._candidates(database).get((table_oid, attnum))

    # -- the worker ----------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the worker and wait for it to load the classifiers (a few seconds): a broken
        recognizers file stops the start with its file:line message (ConfigError)."""
        self._pool = await _spawn_worker(self.recognizers)
        self._task = asyncio.create_task(self._drain(), name="pgproxy-sampling")
        log.info("sampling results", extra={"results_per_second": self.config.results_per_second,
                                            "rows_per_result": self.config.rows_per_result})

    async def idle(self) -> None:
        """Wait until every queued sample is classified (tests; the benchmark)."""
        while self.pending or not self._idle.is_set():
            self._wake.set()
            await self._idle.wait()
            await asyncio.sleep(0)

    def counts(self) -> dict[str, int]:
        """What sampling did since the start (in `proxy.stopped`)."""
        return {"results_sampled": self.taken, "values_classified": self.classified,
                "samples_dropped": self.dropped, "pii_detected": self.detected}

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.pending:
                continue
            batch, self.pending, self.pending_samples = self.pending, [], 0
            self._idle.clear()
            try:
                assert self._pool is not None
                detections, classified = await loop.run_in_executor(self._pool, classify_batch, batch)
            except concurrent.futures.process.BrokenProcessPool:
                log.error("the sampling worker died; starting another (its counts start again)")
                try:
                    self._pool = await _spawn_worker(self.recognizers)
                except Exception:
                    log.exception("sampling stopped: its worker cannot start")
                    self._pool = None
                    return
                continue
            except Exception:
                log.exception("the sampling worker failed on a batch")
                continue
            finally:
                if not self.pending:
                    self._idle.set()
            self.classified += classified
            for detection in detections:
                self._report(detection)

    def _report(self, detection: dict[str, Any]) -> None:
        column = self.column(detection["database"], detection["table_oid"], detection["attnum"])
        if column is None:
            return  # tagged since (or gone): nothing to suggest
        self.detected += 1
        event = {"database": column.database, "table": f"{column.schema}.{column.table}", "column": column.column,
                 "table_oid": column.table_oid, "attnum": column.attnum, "entities": detection["entities"],
                 "sampled": detection["sampled"], "suggested": detection["suggested"],
                 "confidence": detection["confidence"]}
        log.warning("PII in a column nobody tagged", extra={
            "column": f"{column.database}.{column.schema}.{column.table}.{column.column}",
            "entities": sorted(detection["entities"]), "suggested": detection["suggested"]})
        if self.audit is not None:
            self.audit.record("pii.detected", event)


WORKER_START_SECONDS = 120.0  # loading Presidio takes 2 s on the reference machine


async def _spawn_worker(recognizers: Path | None) -> concurrent.futures.ProcessPoolExecutor:
    """One worker process with the classifiers loaded; the loading's own error (a ConfigError for
    a broken recognizers file) is raised here."""
    # spawn, not fork: the proxy has threads (the audit writer's, aiohttp's), which fork does not copy.
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        async with asyncio.timeout(WORKER_START_SECONDS):
            await asyncio.get_running_loop().run_in_executor(pool, _worker_start, recognizers)
    except concurrent.futures.process.BrokenProcessPool:
        pool.shutdown(wait=False, cancel_futures=True)
        raise RuntimeError("the sampling worker process ended while it started (a program that runs pgproxy in "
                           "its own process must do so under `if __name__ == \"__main__\":`, which Python's "
                           "spawned processes require)") from None
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    return pool


# -- in the worker process ---------------------------------------------------------------

_worker: _Worker | None = None


class _Worker:
    """The classifier and every column's counts so far, and the tags already reported."""

    def __init__(self, recognizers: Path | None) -> None:
        from classifiers import Classifier
        from classifiers.custom import load_recognizers

        self.classifier = load_recognizers(recognizers).classifier() if recognizers is not None else Classifier()
        self.totals: dict[tuple[str, int, int], tuple[int, dict[str, int]]] = {}
        self.reported: dict[tuple[str, int, int], frozenset[str]] = {}

    def batch(self, batch: list[Payload]) -> tuple[list[dict[str, Any]], int]:
        changed: dict[tuple[str, int, int], str] = {}
        classified = 0
        for database, table_oid, attnum, name, codec, raw in batch:
            sampled, counts = self.classifier.count(value.decode(codec, "replace") for value in raw)
            classified += sampled
            key = (database, table_oid, attnum)
            before, totals = self.totals.get(key, (0, {}))
            for entity, count in counts.items():
                totals[entity] = totals.get(entity, 0) + count
            self.totals[key] = (before + sampled, totals)
            if counts:
                changed[key] = name
        detections = []
        for key, name in changed.items():
            sampled, totals = self.totals[key]
            evidence = self.classifier.evidence(name, sampled, totals)
            reported = self.reported.get(key, frozenset())
            if evidence.suggested <= reported:
                continue
            self.reported[key] = reported | evidence.suggested
            detections.append({"database": key[0], "table_oid": key[1], "attnum": key[2],
                               "entities": {e: totals[e] for e in sorted(totals)}, "sampled": sampled,
                               "suggested": sorted(evidence.suggested), "confidence": evidence.confidence})
        return detections, classified


def _worker_start(recognizers: Path | None) -> None:
    global _worker
    _worker = _Worker(recognizers)


def classify_batch(batch: list[Payload]) -> tuple[list[dict[str, Any]], int]:
    """In the worker: classify a batch of samples; the columns whose suggestions grew, and how
    many values were classified."""
    assert _worker is not None
    return _worker.batch(batch)
