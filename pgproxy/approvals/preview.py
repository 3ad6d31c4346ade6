"""What a held statement would do, for the reviewer: the planner's row estimate and plan.

For a held read or DML statement, `Previews.start()` runs ``EXPLAIN`` (never ANALYZE: nothing
executes) in the background, once the request is made, on a connection of pgproxy's own to
the route's upstream -- as the route's role, never on the agent's connection -- inside
``BEGIN READ ONLY`` … ``ROLLBACK`` with a ``statement_timeout`` and a ``lock_timeout``, and
with the session's search_path and the statement's parameters (as text, their types inferred
by the server as for the agent's Parse). It never delays the hold: the page shows
"estimating…" until the result is in, then the estimate, or why there is none.

Planning can run code: the planner folds immutable functions and asks stable ones for
estimates. So no EXPLAIN runs for a statement that the analysis says calls user functions,
runs code pgproxy cannot see, or that it cannot read (`planning_runs_code`), nor for DDL and
anything but SELECT, INSERT, UPDATE, DELETE and MERGE. A plan may quote the statement's
literals and parameters: the reviewer sees those anyway.

Results are kept in this process (the one holding the statement), like the page's views.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pgproxy.analysis.gate import planning_runs_code
from pgproxy.analysis.model import Analysis, Kind
from pgproxy.catalog import DEFAULT_MAX_MESSAGE_BYTES, EXTENDED_REPLIES, read_replies, simple_query
from pgproxy.config import Route
from pgproxy.errors import ProxyError, UpstreamProtocolError
from pgproxy.upstream import UpstreamConnection, connect_upstream
from pgproxy.wire import messages as m

log = logging.getLogger("pgproxy.approvals")

EXPLAINED_COMMANDS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"})
MAX_STATEMENT_CHARS = 256 * 1024  # longer statements are not planned for a preview
MAX_PLAN_LINES = 200  # of the plan shown
CONCURRENT = 4  # EXPLAINs at once per process (each opens a connection to the upstream)
ENTRIES = 1024  # previews kept (each at most MAX_PLAN_LINES lines)


class ServerRefused(Exception):
    """The upstream answered the preview's query with an error (its message)."""


@dataclass(frozen=True, slots=True)
class Preview:
    """One request's preview. `state`: "estimating", "ready" (rows and plan), or "none" (`note`
    says why: not estimated for this kind of statement, or the EXPLAIN failed)."""

    state: str
    rows: int | None = None  # the planner's estimate of the rows returned or changed
    plan: str = ""
    note: str = ""

    def to_json(self) -> dict[str, object]:
        return {"state": self.state, "rows": self.rows, "plan": self.plan, "note": self.note}


ESTIMATING = Preview("estimating")

# One store for every event loop of the process (tests run several proxies), keyed by
# unguessable approval ids; bounded.
_previews: OrderedDict[str, Preview] = OrderedDict()
_lock = threading.Lock()


def preview_of(approval_id: str) -> Preview | None:
    """The preview of a request held by this process (None: none was started here)."""
    with _lock:
        return _previews.get(approval_id)


def _keep(approval_id: str, preview: Preview) -> None:
    with _lock:
        _previews[approval_id] = preview
        _previews.move_to_end(approval_id)
        while len(_previews) > ENTRIES:
            _previews.popitem(last=False)


def not_explained(analyses: Sequence[Analysis], sql: str) -> str | None:
    """Why the statement gets no EXPLAIN (None: it may be explained)."""
    if len(analyses) != 1:
        return (f"no estimate for a request of {len(analyses)} statements" if analyses
                else "no estimate: pgproxy has no analysis of this statement")
    analysis = analyses[0]
    if analysis.kind is Kind.DDL:
        return "no estimate for DDL: see what it changes below"
    if planning_runs_code(analysis):
        return ("no estimate: planning this statement could run code pgproxy cannot see (user functions, "
                "or a statement it cannot read), so pgproxy does not plan it before it is approved")
    if analysis.kind not in (Kind.READ, Kind.WRITE) or analysis.command not in EXPLAINED_COMMANDS:
        return f"no estimate for {analysis.command} statements (only SELECT, INSERT, UPDATE, DELETE and MERGE)"
    if len(sql) > MAX_STATEMENT_CHARS:
        return f"no estimate: the statement is longer than {MAX_STATEMENT_CHARS:,} characters"
    return None


class Previews:
    """The EXPLAIN previews one gate runs (their tasks end with it)."""

    def __init__(self, timeout_seconds: float) -> None:
        self.timeout_seconds = timeout_seconds  # 0: no previews
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: asyncio.Semaphore | None = None  # made on the event loop that uses it

    def start(self, approval_id: str, route: Route, sql: str, parameters: tuple[str | None, ...],
              analyses: Sequence[Analysis], search_path: tuple[str, ...] | None) -> Callable[[], None] | None:
        """Record the request's preview as estimating (or why there is none, returning None);
        return what starts the EXPLAIN in the background (call it once the request is stored)."""
        if self.timeout_seconds <= 0:
            _keep(approval_id, Preview("none", note="no estimate: EXPLAIN previews are off "
                                                    "(approvals.explain_timeout_seconds: 0)"))
            return None
        why = not_explained(analyses, sql)
        if why is not None:
            _keep(approval_id, Preview("none", note=why))
            return None
        _keep(approval_id, ESTIMATING)

        def run() -> None:
            task = asyncio.get_running_loop().create_task(
                self._run(approval_id, route, sql, parameters, search_path))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return run

    async def _run(self, approval_id: str, route: Route, sql: str, parameters: tuple[str | None, ...],
                   search_path: tuple[str, ...] | None) -> None:
        if self._running is None:
            self._running = asyncio.Semaphore(CONCURRENT)
        try:
            async with asyncio.timeout(self.timeout_seconds):
                async with self._running:
                    found = await explain(route, sql, parameters, search_path, self.timeout_seconds)
        except TimeoutError:
            found = Preview("none", note=f"no estimate: EXPLAIN did not finish in {self.timeout_seconds:g} s")
        except (ProxyError, OSError) as exc:
            found = Preview("none", note=f"no estimate: {getattr(exc, 'message', None) or exc}")
        except Exception as exc:  # a preview never fails the hold: say so, and log it
            log.exception("EXPLAIN preview failed", extra={"approval": approval_id})
            found = Preview("none", note=f"no estimate: {type(exc).__name__}")
        _keep(approval_id, found)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def explain(route: Route, sql: str, parameters: tuple[str | None, ...],
                  search_path: tuple[str, ...] | None, timeout_seconds: float) -> Preview:
    """EXPLAIN `sql` with `parameters` on a connection of pgproxy's own, read only."""
    conn = await connect_upstream(route, {"application_name": "pgproxy-explain", "client_encoding": "UTF8"},
                                  max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES)
    try:
        milliseconds = max(1, int(timeout_seconds * 1000))
        await simple_query(conn, f"BEGIN READ ONLY; SET LOCAL statement_timeout = {milliseconds}; "
                                 f"SET LOCAL lock_timeout = {max(1, milliseconds // 4)}")
        if search_path is not None:  # names resolve as in the agent's session
            path = ", ".join('"' + name.replace('"', '""') + '"' for name in search_path)
            await _extended(conn, "SELECT pg_catalog.set_config('search_path', $1, true)", (path,))
        try:
            # One statement only: the extended protocol refuses a text of several.
            # Options first: whatever the statement's text starts with, it cannot be read as options.
            lines = await _extended(conn, "EXPLAIN (ANALYZE false, FORMAT TEXT) " + sql, parameters)
        except ServerRefused as exc:
            return Preview("none", note=f"no estimate: EXPLAIN failed: {exc}")
        await simple_query(conn, "ROLLBACK")
    finally:
        conn.writer.close()
    plan = [line for line in lines if line]
    return Preview("ready", rows=_estimated_rows(plan), plan="\n".join(plan[:MAX_PLAN_LINES])
                   + (f"\n… ({len(plan) - MAX_PLAN_LINES} more lines)" if len(plan) > MAX_PLAN_LINES else ""))


# A plan line ends with its estimate; what comes before it (names, aliases) is the statement's.
_ROWS = re.compile(r"\(cost=\d+\.\d+\.\.\d+\.\d+ rows=(\d+) width=\d+\)$")
_MODIFY = re.compile(r"^(Insert|Update|Delete|Merge) on ")
_CHILD = "  ->  "  # the first plan under the top node (CTEs and InitPlans are indented further)


def _estimated_rows(plan: Sequence[str]) -> int | None:
    """The rows the statement returns, or for INSERT/UPDATE/DELETE/MERGE the rows it changes
    (the estimate of the plan under its ModifyTable node, which itself estimates what it returns)."""
    if not plan:
        return None
    top = plan[0]
    if _MODIFY.match(top):
        for line in plan[1:]:
            if line.startswith(_CHILD):
                found = _ROWS.search(line)
                return int(found.group(1)) if found else None
        return None
    found = _ROWS.search(top)
    return int(found.group(1)) if found else None


async def _extended(conn: UpstreamConnection, sql: str, parameters: Sequence[str | None]) -> list[str]:
    """Run `sql` with text `parameters` (Parse, Bind, Execute, Sync); the first column of its
    rows. An ErrorResponse raises ServerRefused once ReadyForQuery came."""
    params = tuple(p.encode("utf-8", "surrogateescape") if p is not None else None for p in parameters)
    conn.writer.write(m.Parse("", sql).encode() + m.Bind("", "", (), params, ()).encode()
                      + m.Execute("").encode() + m.Sync().encode())
    await conn.writer.drain()
    rows, error = await read_replies(conn, ignored=EXTENDED_REPLIES, max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES,
                                     during="EXPLAIN")
    if error is not None:
        raise ServerRefused(error.message or "the upstream reported an error")
    if not all(rows):
        raise UpstreamProtocolError("upstream sent a malformed DataRow")
    return [row[0] or "" for row in rows]
