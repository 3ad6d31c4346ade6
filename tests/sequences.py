"""Protocol message sequences for the differential tests (tests/test_differential.py).

A sequence is a list of steps, each a plain dataclass: the frontend messages (`Parse`, `Bind`,
`Describe`, `Execute`, `Close`, `Flush`, `Sync`, `Query`) and two boundaries, `Write` (what came
before goes out in one write) and `Wait` (the same, then read every answer owed so far). The
runner ends every sequence with a `Sync` and a `Wait`, so nothing is left unanswered.

Statements come from one small table, `STATEMENTS`, keyed by the marker each returns in its first
column (``m``): benign ones (``b…``), failing ones (``f…``: at Parse, at Bind, or after a row) and
risky ones (``r…``) reading tagged columns of ``customers``. A risky statement's WHERE clause calls
``difftest_gate('rN')``, a test-only function that raises for odd N (`gate_allows`): run directly, a
risky statement the test's reviewer would deny fails at the same message as it does through the
proxy, so both runs stay in step. `Parse` names a statement by its marker; a `Query` text may name
one as ``{r4}``, expanded when encoded::

    steps = [Parse("", "r2"), Bind("", ""), Parse("", "b1"), Execute(""), Sync(), Wait(),
             Query("BEGIN"), Query("DECLARE p1 CURSOR FOR {r4}"), Query("FETCH 1 FROM p1")]
    client = RawClient(port)
    client.login("app_plain", "plain-pass")  # directly; or client.login() through a proxy
    run = run_sequence(client, steps)
    run.outcomes[3].rows     # what the server answered to Execute(""): [("r2", <ssn>, <email>)]
    print(run.transcript())  # one line per message: what was sent, what came back

`run_sequence` attributes every answer to the message it answers, the way PostgreSQL answers
(after an error in an extended-protocol message nothing is answered until Sync, a Query
included), and never hangs: each run has a deadline and ends early, saying why, when the
connection closes or answers something the protocol does not allow there.
"""

from __future__ import annotations

import random
import re
import struct
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pgproxy.wire import messages as m
from tests.harness import RawClient

# --- statements -----------------------------------------------------------------------------

STATEMENTS: dict[str, str] = {
    # Benign: each returns its marker on every row; several rows, so that row limits matter.
    "b1": "SELECT 'b1' AS m",
    "b2": "SELECT 'b2' AS m, g FROM generate_series(1, 3) AS g",
    "b3": "SELECT 'b3' AS m, g, g * g AS sq FROM generate_series(1, 5) AS g",
    "b4": "SELECT 'b4' AS m, count(*) AS n FROM orders WHERE total > 0",
    # Untagged text columns of a table: run-time sampling copies them as they pass (pgproxy.sampling).
    "b5": "SELECT 'b5' AS m, country, plan FROM customers WHERE id <= 4 ORDER BY id",
    # Failing: when planned (a constant, so at Bind), after a row, at Parse (missing table, syntax).
    "f1": "SELECT 'f1' AS m, 1 / 0 AS boom",
    "f2": "SELECT 'f2' AS m, 10 / (2 - g) AS boom FROM generate_series(1, 3) AS g",
    "f3": "SELECT 'f3' AS m, x FROM difftest_missing",
    "f4": "SELEC 'f4' AS m",
    # Risky: tagged columns of customers (name, email, phone, ssn); gated (see module doc).
    "r1": "SELECT 'r1' AS m, ssn FROM customers WHERE id = 1 AND difftest_gate('r1')",
    "r2": "SELECT 'r2' AS m, ssn, email FROM customers WHERE id = 1 AND difftest_gate('r2')",
    "r3": "SELECT 'r3' AS m, email FROM customers WHERE id BETWEEN 2 AND 4 AND difftest_gate('r3')",
    "r4": "SELECT 'r4' AS m, name, phone FROM customers WHERE id BETWEEN 2 AND 4 AND difftest_gate('r4')",
    "r5": "SELECT 'r5' AS m, phone FROM customers WHERE id = 5 AND difftest_gate('r5')",
    "r6": "SELECT 'r6' AS m, ssn FROM customers WHERE id BETWEEN 5 AND 7 AND difftest_gate('r6')",
    "r7": "SELECT 'r7' AS m, name, email FROM customers WHERE id BETWEEN 6 AND 8 AND difftest_gate('r7')",
    "r8": "SELECT 'r8' AS m, email, ssn FROM customers WHERE id = 8 AND difftest_gate('r8')",
}
BENIGN = tuple(k for k in STATEMENTS if k[0] == "b")
FAILING = tuple(k for k in STATEMENTS if k[0] == "f")
RISKY = tuple(k for k in STATEMENTS if k[0] == "r")

# The gate, created in the test database by the differential tests (its owner: the superuser).
GATE_FUNCTION_SQL = """\
CREATE OR REPLACE FUNCTION difftest_gate(marker text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  IF substr(marker, 2)::int % 2 = 1 THEN
    RAISE EXCEPTION 'difftest_gate refused %', marker USING ERRCODE = 'P0001';
  END IF;
  RETURN true;
END $$;
"""
_GATE_ERROR = re.compile(r"^difftest_gate refused (r\d+)$")
_MARKER_IN_TEXT = re.compile(r"'([bfr]\d+)'")
_MARKER_VALUE = re.compile(r"^[bfr]\d+$")
_PLACEHOLDER = re.compile(r"\{([bfr]\d+)\}")


def gate_allows(marker: str) -> bool:
    """Whether difftest_gate lets risky statement `marker` run (the reviewer's rule agrees)."""
    return int(marker[1:]) % 2 == 0


def expand(text: str) -> str:
    """A Query text with ``{marker}`` placeholders replaced by the statements they name."""
    return _PLACEHOLDER.sub(lambda found: STATEMENTS[found.group(1)], text)


def markers_in(text: str) -> list[str]:
    """The statement markers a SQL text names (as quoted literals), in order."""
    return _MARKER_IN_TEXT.findall(text)


# --- the language ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parse:
    name: str
    sql: str  # a key of STATEMENTS

    def encode(self) -> bytes:
        return m.Parse(self.name, STATEMENTS[self.sql]).encode()


@dataclass(frozen=True, slots=True)
class Bind:
    portal: str
    statement: str

    def encode(self) -> bytes:
        return m.Bind(self.portal, self.statement, (), (), ()).encode()


@dataclass(frozen=True, slots=True)
class Describe:
    kind: str  # "S" or "P"
    name: str

    def encode(self) -> bytes:
        return m.Describe(self.kind, self.name).encode()


@dataclass(frozen=True, slots=True)
class Execute:
    portal: str
    max_rows: int = 0

    def encode(self) -> bytes:
        return m.Execute(self.portal, self.max_rows).encode()


@dataclass(frozen=True, slots=True)
class Close:
    kind: str  # "S" or "P"
    name: str

    def encode(self) -> bytes:
        return m.frame(m.CLOSE, self.kind.encode() + m.encode_str(self.name))


@dataclass(frozen=True, slots=True)
class Flush:
    def encode(self) -> bytes:
        return m.frame(m.FLUSH, b"")


@dataclass(frozen=True, slots=True)
class Sync:
    def encode(self) -> bytes:
        return m.Sync().encode()


@dataclass(frozen=True, slots=True)
class Query:
    text: str  # may name statements as {marker}

    def encode(self) -> bytes:
        return m.Query(expand(self.text)).encode()


@dataclass(frozen=True, slots=True)
class Write:
    """Boundary: what came before goes out in one write; answers are not awaited."""


@dataclass(frozen=True, slots=True)
class Wait:
    """Boundary: what came before goes out, then every answer owed so far is read."""


Message = Parse | Bind | Describe | Execute | Close | Flush | Sync | Query
Step = Message | Write | Wait
STEP_TYPES: dict[str, type[Any]] = {t.__name__: t for t in (Parse, Bind, Describe, Execute, Close, Flush, Sync,
                                                             Query, Write, Wait)}


def show(steps: list[Step]) -> str:
    """A sequence as Python source (what a regression case is written as)."""
    return "[" + ", ".join(repr(step) for step in steps) + "]"


def to_json(steps: list[Step]) -> list[list[Any]]:
    """A sequence as JSON-able data: [type name, field values…] per step."""
    return [[type(step).__name__, *asdict(step).values()] for step in steps]


def from_json(data: list[list[Any]]) -> list[Step]:
    return [STEP_TYPES[name](*values) for name, *values in data]


def sql_of(step: Message) -> str:
    """The SQL text a Parse or Query step sends."""
    if isinstance(step, Parse):
        return STATEMENTS[step.sql]
    assert isinstance(step, Query)
    return expand(step.text)


# --- outcomes -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """What the server answered to one message of a run.

    `answer`: "ok" (the one message expected: ParseComplete, BindComplete, CloseComplete, a
    Describe's answer), "rows" (an Execute or Query that ran: `rows`, then `tag`, which is the
    CommandComplete tag, "suspended" or "empty"), "error" (`error`: the ErrorResponse's fields,
    perhaps after some rows), "ready" (Sync: `tag` is the transaction status), "skipped" (the
    server discarded it, failing until Sync), "flush", or "lost" (the run ended before an answer).
    """

    step: int  # index in the sequence
    message: Message
    answer: str = "lost"
    rows: list[tuple[str | None, ...]] = field(default_factory=list)
    tag: str = ""
    error: dict[str, str] | None = None

    @property
    def sqlstate(self) -> str:
        return self.error.get("C", "") if self.error else ""

    def gate_refusal(self) -> str | None:
        """The risky marker whose difftest_gate raised this error (the server ran it), if any."""
        found = _GATE_ERROR.match(self.error.get("M", "")) if self.error else None
        return found.group(1) if found else None

    def brief(self) -> str:
        if self.answer == "rows":
            return f"{len(self.rows)} rows {sorted({r[0] or '' for r in self.rows})} {self.tag}"
        if self.answer == "error":
            assert self.error is not None
            prefix = f"{len(self.rows)} rows, then " if self.rows else ""
            return f"{prefix}error {self.sqlstate}: {self.error.get('M', '')[:90]}"
        return f"{self.answer} {self.tag}".strip()


@dataclass(slots=True)
class Run:
    """One sequence run on one connection: an outcome per message sent, and how it ended."""

    outcomes: list[Outcome] = field(default_factory=list)
    notices: int = 0
    ended: str | None = None  # None: cleanly; else "timeout …", "closed …", "fatal …", "desync …"
    seconds: float = 0.0

    def executions(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.answer in ("rows", "error")]

    def transcript(self) -> str:
        lines = [f"  {o.step:3} {o.message!r:45.45} -> {o.brief()}" for o in self.outcomes]
        if self.ended:
            lines.append(f"  run ended: {self.ended}")
        return "\n".join(lines)


class ProtocolDesync(Exception):
    """An answer the protocol does not allow at this point of the run."""


def _data_row(body: bytes) -> tuple[str | None, ...]:
    (count,) = struct.unpack_from("!h", body)
    pos = 2
    values: list[str | None] = []
    for _ in range(count):
        (size,) = struct.unpack_from("!i", body, pos)
        pos += 4
        if size < 0:
            values.append(None)
        else:
            values.append(body[pos:pos + size].decode("utf-8", "replace"))
            pos += size
    return tuple(values)


def row_marker(row: tuple[str | None, ...]) -> str | None:
    """The marker in a result row's first column, if it holds one."""
    first = row[0] if row else None
    return first if first is not None and _MARKER_VALUE.match(first) else None


# --- the runner ----------------------------------------------------------------------------------


_IGNORED = frozenset({m.NOTICE_RESPONSE, m.PARAMETER_STATUS, m.NOTIFICATION_RESPONSE})


class _Reader:
    """The backend messages of a run, with NoticeResponse/ParameterStatus/Notification dropped and
    every read bounded by the run's deadline."""

    def __init__(self, client: RawClient, run: Run, deadline: float) -> None:
        self.client = client
        self.run = run
        self.deadline = deadline

    def next(self) -> tuple[int, bytes]:
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.client.sock.settimeout(left)
            message = self.client.read_message()
            if message is None:
                raise ConnectionResetError("the connection closed")
            if message[0] in _IGNORED:
                self.run.notices += message[0] == m.NOTICE_RESPONSE
                continue
            if message[0] == m.ERROR_RESPONSE:
                fields = m.decode_fields(message[1])
                if fields.get("S") in ("FATAL", "PANIC"):
                    raise ConnectionAbortedError(f"{fields.get('C')}: {fields.get('M')}")
            return message


def _answer(reader: _Reader, outcome: Outcome) -> bool:
    """Read the answer to `outcome.message`; True when it was an error (failing until Sync)."""
    step = outcome.message

    def expect(*types: int) -> tuple[int, bytes]:
        type_byte, body = reader.next()
        if type_byte == m.ERROR_RESPONSE:
            outcome.answer, outcome.error = "error", m.decode_fields(body)
            return type_byte, body
        if type_byte not in types:
            raise ProtocolDesync(f"{chr(type_byte)!r} in answer to {step!r}")
        return type_byte, body

    if isinstance(step, (Parse, Bind, Close)):
        expected = {Parse: m.PARSE_COMPLETE, Bind: m.BIND_COMPLETE, Close: m.CLOSE_COMPLETE}[type(step)]
        if expect(expected)[0] == expected:
            outcome.answer = "ok"
    elif isinstance(step, Describe):
        if step.kind == "S" and expect(m.PARAMETER_DESCRIPTION)[0] != m.PARAMETER_DESCRIPTION:
            return True
        type_byte, _ = expect(m.ROW_DESCRIPTION, m.NO_DATA)
        if type_byte != m.ERROR_RESPONSE:
            outcome.answer, outcome.tag = "ok", "row description" if type_byte == m.ROW_DESCRIPTION else "no data"
    elif isinstance(step, Execute):
        while True:
            type_byte, body = expect(m.DATA_ROW, m.COMMAND_COMPLETE, m.PORTAL_SUSPENDED, m.EMPTY_QUERY_RESPONSE)
            if type_byte == m.DATA_ROW:
                outcome.rows.append(_data_row(body))
                continue
            if type_byte != m.ERROR_RESPONSE:
                outcome.answer = "rows"
                outcome.tag = {m.PORTAL_SUSPENDED: "suspended", m.EMPTY_QUERY_RESPONSE: "empty"}.get(
                    type_byte, m.decode_str(body[:-1]))
            break
    elif isinstance(step, Sync):
        type_byte, body = expect(m.READY_FOR_QUERY)
        if type_byte == m.ERROR_RESPONSE:
            raise ProtocolDesync(f"an error in answer to Sync: {outcome.error}")
        outcome.answer, outcome.tag = "ready", chr(body[0])
        return False
    elif isinstance(step, Query):
        # A simple Query's error does not start failing-until-Sync.
        while True:
            type_byte, body = reader.next()
            if type_byte == m.DATA_ROW:
                outcome.rows.append(_data_row(body))
            elif type_byte == m.COMMAND_COMPLETE:
                outcome.answer, outcome.tag = "rows", m.decode_str(body[:-1])
            elif type_byte == m.EMPTY_QUERY_RESPONSE:
                outcome.answer, outcome.tag = "rows", "empty"
            elif type_byte == m.ERROR_RESPONSE:
                outcome.answer, outcome.error = "error", m.decode_fields(body)
            elif type_byte == m.READY_FOR_QUERY:
                if outcome.answer == "lost":
                    raise ProtocolDesync(f"ReadyForQuery with no answer to {step!r}")
                outcome.tag = f"{outcome.tag} [{chr(body[0])}]".strip()
                return False
            elif type_byte != m.ROW_DESCRIPTION:
                raise ProtocolDesync(f"{chr(type_byte)!r} in answer to {step!r}")
    return outcome.answer == "error"


def run_sequence(client: RawClient, steps: list[Step], *, seconds: float = 30.0,
                 cuts: random.Random | None = None) -> Run:
    """Send `steps` on a logged-in `client`; the outcome of every message, as the server answered.

    `cuts`: write each batch in pieces cut at random places, each a write of its own.
    """
    run = Run()
    started = time.monotonic()
    reader = _Reader(client, run, started + seconds)
    steps = [*steps, Sync(), Wait()]
    unanswered: list[Outcome] = []  # sent, in order, not answered yet
    batch: list[bytes] = []
    failing = False  # after an extended-protocol error, the server skips all but Sync

    def write() -> None:
        data = b"".join(batch)
        batch.clear()
        if not data:
            return
        if cuts is None:
            client.send(data)
            return
        points = sorted(cuts.sample(range(1, len(data)), min(len(data) - 1, cuts.randint(0, 4))))
        for start, end in zip([0, *points], [*points, len(data)], strict=True):
            client.send(data[start:end])
            time.sleep(0.001)

    def settle() -> None:
        """Read the answers to everything up to the last message that is sure to be answered
        now (Sync, Query, Flush); what follows it waits for a later Sync or Flush."""
        nonlocal failing
        last = max((i for i, o in enumerate(unanswered) if isinstance(o.message, (Sync, Query, Flush))),
                   default=-1)
        for outcome in unanswered[:last + 1]:
            if isinstance(outcome.message, Flush):
                outcome.answer = "flush"
            elif failing and not isinstance(outcome.message, Sync):
                outcome.answer = "skipped"
            else:
                failed = _answer(reader, outcome)
                if isinstance(outcome.message, Sync):
                    failing = False
                elif failed and not isinstance(outcome.message, Query):
                    failing = True
        del unanswered[:last + 1]

    try:
        for index, step in enumerate(steps):
            if isinstance(step, (Write, Wait)):
                write()
                if isinstance(step, Wait):
                    settle()
                continue
            outcome = Outcome(index, step)
            run.outcomes.append(outcome)
            unanswered.append(outcome)
            batch.append(step.encode())
    except TimeoutError:
        run.ended = f"timeout after {seconds:g} s"
    except ConnectionAbortedError as exc:
        run.ended = f"fatal {exc}"
    except (ConnectionError, OSError) as exc:
        run.ended = f"closed: {exc}"
    except ProtocolDesync as exc:
        run.ended = f"desync: {exc}"
    run.seconds = time.monotonic() - started
    return run
