"""The protocol model: what the server holds and what it owes, without any I/O.

Theory of operation
-------------------
PostgreSQL executes *portals* (snapshots of a statement taken at Bind) and changes its state
only when a message succeeds. The model follows it the way pgbouncer's outstanding-request
queue and PgDog's protocol state do:

- Every message the relay forwards is recorded as an `Expect`: what the server will answer
  to it (ParseComplete, BindComplete, rows and CommandComplete, ReadyForQuery, ...) and what
  the server's objects become when it succeeds. Messages are numbered into *segments*: the
  extended-protocol messages up to a Sync are one; each simple Query or FunctionCall is one
  of its own.
- Two `Objects` are kept. `confirmed` changes only when the server's answer confirms a
  message (a failed Parse or Bind changes nothing; after an ErrorResponse everything up to
  Sync is known to be skipped). `predicted` is `confirmed` plus what every message still
  waiting for its answer will do if it succeeds; it is rebuilt from `confirmed` when an
  error proves a prediction wrong.
- The relay judges each message against `predicted`, but only where a wrong prediction
  cannot matter: a message may rely on an unanswered message of its own segment (if that one
  fails, the server skips the rest of the segment, this message included), never on one of
  an earlier segment (whose failure would leave the name as it was). When it would have to,
  `certain` is False and the relay waits for the answers first.
- The server's answers are checked against the queue. An answer the model did not expect
  (rows from a portal it believes does not exist, a ReadyForQuery whose transaction status
  disagrees, a stray message) raises `Desync`: the session ends, it never continues on a guess.

The refusal mechanism is part of the same queue: in place of a refused message the relay
sends ``Describe`` of a statement name this session reserved (random, and refused when a
client uses its prefix), so the server raises its own error at exactly that point; the model
knows the position of that error in the answers and replaces it with the proxy's.
"""

from __future__ import annotations

import contextlib
import enum
import secrets
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from pgproxy.masking import CopyMask, CopySpec, MaskSpec, RowMask
from pgproxy.protocol.lexing import Lexing
from pgproxy.protocol.objects import REFERENCES, Objects, OpKind, Portal, PreparedStatement, SessionOp
from pgproxy.wire import messages as m
from pgproxy.wire.codec import unpack_length as _unpack_length
from pgproxy.wire.values import decode_parameter_description

if TYPE_CHECKING:
    from pgproxy.sampling import RowSample, Sampler

RESERVED_PREFIX = "pgproxy_reserved"  # statement and portal names a client may not use


class Desync(Exception):
    """The server answered something the model did not expect: the session must end."""


class K(enum.IntEnum):
    """What an `Expect` waits for an answer to."""

    PARSE = 1
    BIND = 2
    DESCRIBE = 3
    EXECUTE = 4
    CLOSE = 5
    SYNC = 6
    QUERY = 7
    FUNCTION = 8
    PROBE = 9  # the refusal mechanism: an error in place of a refused message
    COPY_END = 10  # the client's CopyDone/CopyFail: a position in the stream, no answer
    CYCLE = 11  # Bind, [Describe], Execute and Sync of a prepared statement run again (see quick_cycle)


_EXTENDED = frozenset({K.PARSE, K.BIND, K.DESCRIBE, K.EXECUTE, K.CLOSE, K.PROBE})


@dataclass(slots=True)
class QueryPart:
    """One statement of a simple Query: its effect on the session's objects, the tagged columns
    its result may show (table oid, attnum), and what it runs when it runs another object."""

    op: SessionOp | None = None
    permitted: frozenset[tuple[int, int]] = frozenset()
    runs: PreparedStatement | None = None
    mask: MaskSpec | None = None  # its results are masked (see pgproxy.masking)
    copy: CopySpec | None = None  # masked COPY … TO STDOUT: how its rows read


class Expect:
    """One forwarded message (or the proxy's own) and the answer it waits for. Its fields other
    than `kind`, `segment` and `name` are class-level defaults until set: most messages set
    one or two, and this is built on every message of the hot path."""

    kind: K
    segment: int
    name: str
    describe_kind = ""  # DESCRIBE / CLOSE: "S" or "P"
    statement: PreparedStatement | None = None  # PARSE: the new one; DESCRIBE S: the one described
    portal: Portal | None = None  # BIND: the new one; DESCRIBE P / EXECUTE: the one it names
    expect_ok = True  # BIND / EXECUTE: the model believes the message can succeed
    own = False  # sent by the proxy: its answer is not forwarded
    maybe = False  # SYNC: may be ignored by the server (sent during COPY IN)
    op: SessionOp | None = None  # EXECUTE: what running the portal does to the session
    permitted: frozenset[tuple[int, int]] = frozenset()  # EXECUTE: tagged columns it may show
    parts: list[QueryPart] | None = None  # QUERY: None when its statements are not known
    index = 0  # QUERY: the statement being answered
    phase = 0  # where in its answer the server is (see the _P_* constants)
    ran = False  # QUERY: a statement got as far as running
    error = b""  # PROBE: the proxy's ErrorResponse to send instead
    described = False  # CYCLE: the client described the portal (a RowDescription comes first)
    asked = False  # PARSE (own): the server checks a held Query's text (see ProtocolModel.ask)
    mask: MaskSpec | None = None  # EXECUTE / QUERY (the statement answered): its results are masked
    copy: CopySpec | None = None  # EXECUTE: a masked COPY TO STDOUT's format and columns
    fields: list[tuple[int, int, int]] | None = None  # masked EXECUTE: its result's (table, attnum, type)
    feeds: Expect | None = None  # DESCRIBE (own): the masked Execute its RowDescription is for

    def __init__(self, kind: K, segment: int, name: str = "") -> None:
        self.kind = kind
        self.segment = segment
        self.name = name

    def __repr__(self) -> str:
        return f"Expect({self.kind.name}, segment={self.segment}, name={self.name!r}, {vars(self)})"


# Phases of an answer.
_P_START = 0
_P_ROWS = 1  # rows may come (after RowDescription, or from an Execute)
_P_DESCRIBED = 2  # DESCRIBE S: ParameterDescription came
_P_COPY_IN = 3
_P_COPY_OUT = 4
_P_WAIT_READY = 5  # QUERY / FUNCTION: only ReadyForQuery is left
_P_REFUSED = 6  # the result guard refused it: drop what it sends

_STATUS = {b"I": "I", b"T": "T", b"E": "E"}  # ReadyForQuery's transaction status
_DATA_ROW = m.DATA_ROW
_COMMAND_COMPLETE = m.COMMAND_COMPLETE
_READY_FOR_QUERY = m.READY_FOR_QUERY
_ROW_DESCRIPTION = m.ROW_DESCRIPTION
_BIND_COMPLETE = m.BIND_COMPLETE
_NO_DATA = m.NO_DATA
_EMPTY_QUERY_RESPONSE = m.EMPTY_QUERY_RESPONSE
_PASSED_ALONG = frozenset({m.NOTICE_RESPONSE, m.NOTIFICATION_RESPONSE})  # change nothing the model follows
_ASYNC = frozenset({m.NOTICE_RESPONSE, m.NOTIFICATION_RESPONSE, m.PARAMETER_STATUS})

_COLUMNS_MEMO = 4096  # entries
_COLUMNS_MEMO_BODY = 2048  # bytes: larger RowDescriptions are decoded each time
_columns_memo: dict[bytes, list[tuple[int, int]]] = {}


def table_columns(body: bytes) -> list[tuple[int, int]]:
    """A RowDescription's fields as (table oid, attnum), (0, 0) for a field that is not a column
    of a table (the position of each field is the DataRow's). A statement's results repeat the
    same RowDescription, so it is decoded once."""
    found = _columns_memo.get(body)
    if found is None:
        found = m.row_description_sources(body)
        if len(body) <= _COLUMNS_MEMO_BODY:
            if len(_columns_memo) >= _COLUMNS_MEMO:
                _columns_memo.clear()
            _columns_memo[body] = found
    return found


# The result guard: (columns of a result, columns the execution may show) -> refused names.
Guard = Callable[[list[tuple[int, int]], frozenset[tuple[int, int]]], list[str]]


@dataclass(slots=True)
class GuardRefusal:
    columns: list[str]
    message: str | None = None  # why, when it is not a tagged column the execution may not show


class ProtocolModel:
    """One session's model. The relay calls the client methods (`parse`, `bind`, `execute`,
    ...) for each message it forwards, in order, and `answer` for each server message.

    `strict` (enforce mode) makes every prediction binding: a success the model did not expect
    ends the session. Without it (pass-through, where statements are not analysed and SQL
    PREPARE or DECLARE are unknown) only the shape of the answers is followed."""

    trace: ClassVar[bool] = False  # tests: record what each execution was predicted to run

    def __init__(self, *, strict: bool = True, guard: Guard | None = None) -> None:
        self.strict = strict
        self.guard = guard
        self.confirmed = Objects()
        self.predicted = Objects()
        self.queue: deque[Expect] = deque()
        self.segment = 0  # the segment messages forwarded now belong to
        self.confirmed_segment = -1  # every segment up to this one is answered
        self.doomed = False  # the server skips the rest of this segment (an error, or a refusal, came first)
        self.copy_in = False  # the server is reading COPY data from the client
        self.rows_ok = False  # DataRows may come now (and pass the guard)
        self.guarding = False  # the guard refused a result: drop answers until ReadyForQuery
        self.refusals: list[GuardRefusal] = []  # guard refusals not yet reported by the relay
        # The masks of the result being relayed (its rows then take the relay's slower path).
        self.row_mask: RowMask | None = None
        self.copy_mask: CopyMask | None = None
        # Run-time sampling (pgproxy.sampling): the proxy's sampler, the session's database, and the
        # sample of the result being relayed (its rows take the slower path until it is complete).
        self.sampler: Sampler | None = None
        self.sample_database = ""
        self.row_sample: RowSample | None = None
        self.reserved = f"{RESERVED_PREFIX}_{secrets.token_hex(16)}_"
        self.lexing = Lexing()  # how the server reads the client's text (see pgproxy.protocol.lexing)
        self.application_name: str | None = None  # as the server last reported it (ParameterStatus)
        self._probes = 0
        self.predicted_runs: list[str] = []
        self.refused_by_server = False  # the last `ask`: the server refused the text (its error went to the client)

    # -- what the relay asks --------------------------------------------------------------

    @property
    def transaction_status(self) -> str:
        """The server's transaction status as its last ReadyForQuery said: I, T or E."""
        confirmed = self.confirmed
        return "E" if confirmed.failed else "T" if confirmed.in_block else "I"

    @property
    def idle(self) -> bool:
        """No answer is outstanding."""
        return not self.queue

    def certain_at(self, touched: int) -> bool:
        """Whether a name last changed by a message of segment `touched` may be predicted:
        that segment is answered, or it is the segment being forwarded."""
        return touched <= self.confirmed_segment or touched >= self.segment

    def statement(self, name: str) -> tuple[PreparedStatement | None, bool]:
        """The statement `name` will be when the next message runs, and whether that is certain."""
        objects = self.predicted
        touched = max(objects.statement_touched.get(name, -1), objects.statements_touched_all)
        return objects.statements.get(name), self.certain_at(touched)

    def portal(self, name: str) -> tuple[Portal | None, bool]:
        """The portal `name` will be when the next message runs, and whether that is certain."""
        objects = self.predicted
        touched = max(objects.portal_touched.get(name, -1), objects.portals_touched_all)
        return objects.portals.get(name), self.certain_at(touched)

    @property
    def segment_open(self) -> bool:
        """Extended-protocol messages of the current segment (no Sync yet) await their answers:
        if one of them fails, the server skips what follows, a simple Query included."""
        for expect in reversed(self.queue):
            if expect.segment != self.segment:
                return False
            if expect.kind in _EXTENDED:
                return True
        return False

    @staticmethod
    def is_reserved(name: str) -> bool:
        return name.startswith(RESERVED_PREFIX)

    # -- client messages, as they are forwarded ------------------------------------------

    def _push(self, expect: Expect) -> None:
        was_idle = not self.queue
        self.queue.append(expect)
        if was_idle:
            self._activate()

    def parse(self, name: str, statement: PreparedStatement) -> None:
        if self.doomed:
            return
        expect = Expect(K.PARSE, self.segment, name)
        expect.statement = statement
        self._predict(expect, self.predicted)
        self._push(expect)

    def bind(self, portal: str, statement_name: str, body: bytes) -> Portal | None:
        """Record a Bind; return the portal it creates (None when the statement does not exist
        or the portal name is taken, so that the server will refuse it)."""
        if self.doomed:
            return None
        statement = self.predicted.statements.get(statement_name)
        created = Portal(statement, body) if statement is not None else None
        taken = portal != "" and portal in self.predicted.portals and portal not in self.predicted.doubtful
        expect = Expect(K.BIND, self.segment, portal)
        expect.portal = created
        if created is None or taken:
            expect.expect_ok = False
        self._predict(expect, self.predicted)
        self._push(expect)
        return created if expect.expect_ok else None

    def describe(self, kind: str, name: str, *, own: bool = False) -> None:
        if self.doomed:
            return
        expect = Expect(K.DESCRIBE, self.segment, name)
        expect.describe_kind = kind
        expect.own = own
        if kind == "S":
            statement, certain = self.statement(name)
            expect.statement = statement if certain else None
        else:
            portal, certain = self.portal(name)
            expect.portal = portal if certain else None
        self._push(expect)

    def execute(self, name: str, portal: Portal | None, permitted: frozenset[tuple[int, int]],
                runs: PreparedStatement | None = None, *, fails: bool = False) -> None:
        """Record an Execute of `portal` (None: the model believes it does not exist; `fails`:
        the server will refuse it, its transaction block being aborted)."""
        if self.doomed:
            return
        op = portal.statement.op if portal is not None else None
        expect = Expect(K.EXECUTE, self.segment, name)
        expect.portal = portal
        expect.expect_ok = portal is not None and not fails
        expect.op = op
        expect.permitted = permitted
        if self.trace and portal is not None:
            self.predicted_runs.append((runs or portal.statement).sql)
        self._predict(expect, self.predicted)
        self._push(expect)

    def execute_masked(self, name: str, portal: Portal, permitted: frozenset[tuple[int, int]], mask: MaskSpec,
                       copy: CopySpec | None, runs: PreparedStatement | None = None) -> bytes:
        """Record an Execute whose results are masked, preceded by the proxy's own Describe of
        the portal: its RowDescription (dropped) names each column's table, attnum and type right
        before the rows. Returns the Describe to send before the Execute."""
        if self.doomed:
            return b""
        describe = Expect(K.DESCRIBE, self.segment, name)
        describe.describe_kind = "P"
        describe.own = True
        describe.portal = portal
        self._push(describe)
        self.execute(name, portal, permitted, runs)
        execute = self.queue[-1]
        execute.mask = mask
        execute.copy = copy
        describe.feeds = execute
        return m.Describe("P", name).encode()

    def masked(self, type_byte: int, body: bytes) -> bytes | None:
        """A DataRow or CopyData of a masked result, masked (the whole message); None when the
        result being relayed is not masked; b"" when a binary COPY's CopyData holds no whole
        tuple yet (its bytes go out with the CopyData that completes it). A row that cannot be
        read ends the session."""
        try:
            if type_byte == _DATA_ROW and self.row_mask is not None:
                return m.frame(_DATA_ROW, self.row_mask.data_row(body))
            if type_byte == m.COPY_DATA and self.copy_mask is not None:
                data = self.copy_mask.copy_data(body)
                return m.frame(m.COPY_DATA, data) if data else b""
        except (ValueError, struct.error) as exc:
            raise Desync(f"pgproxy could not mask a row: {exc}") from None
        return None

    def needs_describe(self, portal: Portal) -> bool:
        """Whether the result guard needs the proxy to Describe `portal` before it runs: its
        columns are unknown and no Describe of it or of its statement is on the way."""
        if portal.result_columns is not None:
            return False
        return not any(e.kind is K.DESCRIBE and (e.portal is portal or e.statement is portal.statement)
                       for e in self.queue)

    def close(self, kind: str, name: str, *, own: bool = False) -> None:
        if self.doomed:
            return
        expect = Expect(K.CLOSE, self.segment, name)
        expect.describe_kind = kind
        expect.own = own
        self._predict(expect, self.predicted)
        self._push(expect)

    def sync(self) -> None:
        expect = Expect(K.SYNC, self.segment)
        expect.maybe = self.copy_in
        self.doomed = False
        if not expect.maybe:
            self._predict(expect, self.predicted)
            self.segment += 1
        self._push(expect)

    def query(self, parts: list[QueryPart] | None) -> None:
        """Record a simple Query: `parts` are its statements in order (None: not known)."""
        if self.doomed:
            return
        self.segment += 1
        segment = self.segment
        expect = Expect(K.QUERY, segment)
        predicted = self.predicted
        if (parts is None and not self.queue and not predicted.frames and not predicted.in_block
                and "" not in predicted.statements and "" not in predicted.portals):
            # The usual case in fewer steps (_predict would change nothing but these marks).
            predicted.statement_touched[""] = predicted.portal_touched[""] = segment
            predicted.portals_touched_all = segment
            self.segment += 1
            self.queue.append(expect)
            return
        expect.parts = parts
        if self.trace:
            self.predicted_runs.extend(p.runs.sql for p in parts or () if p.runs is not None)
        self._predict(expect, predicted)
        self.segment += 1
        self._push(expect)

    def function_call(self) -> None:
        if self.doomed:
            return
        self.segment += 1
        expect = Expect(K.FUNCTION, self.segment)
        self._predict(expect, self.predicted)
        self.segment += 1
        self._push(expect)

    def quick_cycle(self, statement: PreparedStatement, bind: bytes, described: bool,
                    permitted: frozenset[tuple[int, int]]) -> None:
        """A prepared statement run again, in one read, while nothing is outstanding and no
        transaction block is open: Bind of the unnamed portal, Describe of it (or not), Execute
        of all its rows, Sync. The same rules as bind(), describe(), execute() and sync() in one
        step: the portal lives only until the Sync's implicit commit ends it, so the objects do
        not change at all; the answers are checked as those four messages' answers are."""
        expect = Expect(K.CYCLE, self.segment)
        expect.statement = statement  # the portal lives for the cycle only: its statement is what counts
        expect.permitted = permitted
        expect.described = described
        predicted = self.predicted
        predicted.portal_touched[""] = self.segment
        predicted.portals_touched_all = self.segment
        self.segment += 1
        if self.trace:
            self.predicted_runs.append(statement.sql)
        self.queue.append(expect)

    def copy_end(self) -> None:
        """The client sent CopyDone or CopyFail."""
        self.copy_in = False
        if self.queue:
            self.queue.append(Expect(K.COPY_END, self.segment))

    def refuse(self, error: bytes, *, simple: bool, query: bool = False) -> bytes:
        """The bytes to send the server in place of a refused message: a Describe of a
        statement that cannot exist, so the server fails at exactly that point (and, for a
        simple Query or FunctionCall, a Sync that ends the cycle as the client expects). A
        refused simple Query first closes the unnamed statement and portal, as any Query
        that fails does on the server (their answers are the proxy's, not forwarded)."""
        self._probes += 1
        out = b""
        if simple:
            self.segment += 1
        if query:
            for kind in ("S", "P"):
                self.close(kind, "", own=True)
                out += m.frame(m.CLOSE, kind.encode() + b"\0")
        probe = Expect(K.PROBE, self.segment, f"{self.reserved}{self._probes}")
        probe.error = error
        self._push(probe)
        out += m.Describe("S", probe.name).encode()
        if simple:
            self.sync()
            out += m.Sync().encode()
        else:
            self.doomed = True  # the server skips the rest of this segment
        return out

    def ask(self, text: bytes) -> bytes:
        """The bytes that have the server parse a simple Query's one statement (`text`, NUL-
        terminated, as the client sent it) without running anything: Parse of a reserved name,
        its Close, and a Sync. If the server refuses it (an unknown table or column, a syntax
        error), its ErrorResponse and ReadyForQuery are the client's answer to the Query, which
        is then not sent; if it parses, none of its answers reach the client. The unnamed
        statement and portal are closed first, as the Query would drop them in every outcome."""
        self._probes += 1
        self.refused_by_server = False
        self.segment += 1
        name = f"{self.reserved}{self._probes}"
        out = b""
        for kind in ("S", "P"):
            self.close(kind, "", own=True)
            out += m.frame(m.CLOSE, kind.encode() + b"\0")
        parse = Expect(K.PARSE, self.segment, name)
        parse.statement = PreparedStatement("", None, None)
        parse.own = parse.asked = True
        self._predict(parse, self.predicted)
        self._push(parse)
        self.close("S", name, own=True)
        out += m.frame(m.PARSE, m.encode_str(name) + text + b"\0\0") + m.frame(m.CLOSE, b"S" + m.encode_str(name))
        self.sync()
        self.queue[-1].own = True
        return out + m.Sync().encode()

    # -- predictions ----------------------------------------------------------------------

    def _predict(self, expect: Expect, objects: Objects) -> None:
        """What `expect` does to `objects` if it succeeds (applied to `predicted` as it is
        forwarded, and again when `predicted` is rebuilt)."""
        kind = expect.kind
        segment = expect.segment
        if kind is K.PARSE:
            named = expect.name != ""
            if not (named and expect.name in objects.statements):
                assert expect.statement is not None
                objects.set_statement(expect.name, expect.statement, segment)
        elif kind is K.BIND:
            if expect.expect_ok and expect.portal is not None:
                objects.add_portal(expect.name, expect.portal, segment)
        elif kind is K.EXECUTE:
            if expect.op is not None and objects.touches(expect.op):
                objects.apply(expect.op, segment)
        elif kind is K.CLOSE:
            if expect.describe_kind == "S":
                objects.drop_statement(expect.name, segment)
            else:
                objects.drop_portal(expect.name, segment)
        elif kind is K.SYNC or kind is K.FUNCTION:
            if not objects.in_block:
                if objects.frames:
                    objects.end_transaction(True, segment)
                else:
                    objects.portals_touched_all = segment
        elif kind is K.QUERY:
            objects.drop_statement("", segment)
            objects.drop_portal("", segment)
            # A Query under way: its answered statements are confirmed already, and after an
            # error (or its last statement) only ReadyForQuery is left.
            parts = expect.parts or []
            remaining = [] if expect.phase == _P_WAIT_READY else parts[expect.index:]
            for part in remaining:
                if part.op is not None and objects.touches(part.op):
                    objects.apply(part.op, segment)
            if not objects.in_block:
                if objects.frames:
                    objects.end_transaction(True, segment)
                else:
                    objects.portals_touched_all = segment

    def _rebuild(self) -> None:
        predicted = self.confirmed.copy()
        for expect in self.queue:
            if expect.kind is K.SYNC and expect.maybe:
                continue
            self._predict(expect, predicted)
        self.predicted = predicted

    # -- server messages ------------------------------------------------------------------

    def _activate(self) -> None:
        """The head of the queue changed: say whether rows may come, running the result guard
        for an Execute whose columns are known (an injected Describe's answer came first)."""
        while self.queue and self.queue[0].kind is K.COPY_END:
            self.queue.popleft()
        head = self.queue[0] if self.queue else None
        if self.row_sample is not None:
            self._end_sample()
        self.rows_ok = False
        self.row_mask = self.copy_mask = None
        if head is None or head.kind is not K.EXECUTE:
            return
        if not head.expect_ok:
            # A portal the model does not know: only without analysis (pass-through, where SQL
            # DECLARE is not followed) may it run; in enforce mode its rows end the session.
            self.rows_ok = not self.strict
            return
        assert head.portal is not None
        self._guard(head, head.portal.result_columns, head.permitted)

    def _guard(self, expect: Expect, columns: list[tuple[int, int]] | None,
               permitted: frozenset[tuple[int, int]]) -> None:
        if self.guard is not None and columns is None and expect.kind is K.EXECUTE:
            refused = ["(columns unknown)"]  # cannot happen: the proxy described the portal first
        else:
            refused = self.guard(columns, permitted) if self.guard is not None and columns else []
        if refused:
            expect.phase = _P_REFUSED
            self.refusals.append(GuardRefusal(refused))
            self.guarding = True
        else:
            expect.phase = _P_ROWS
            self.rows_ok = not self.guarding
            if expect.mask is not None and expect.copy is not None:
                # A masked COPY (described: NoData) sends no DataRow; its CopyData are masked from
                # its CopyOutResponse on (_mask_copy), and a DataRow ends the session.
                self.rows_ok = False
            elif expect.mask is not None:
                self._mask_rows(expect, expect.mask, permitted)
            elif self.sampler is not None and self.rows_ok and columns:
                self._begin_sample(columns)

    # -- run-time sampling (pgproxy.sampling) ----------------------------------------------

    def _begin_sample(self, columns: list[tuple[int, int]]) -> None:
        assert self.sampler is not None
        sample = self.sampler.begin(self.sample_database, columns, self.lexing.codec)
        if sample is not None:
            self.row_sample = sample
            self.rows_ok = False  # each row goes through `sample_row` until the sample is complete

    def sample_row(self, body: bytes) -> None:
        """A DataRow of the result being sampled (it passes unchanged)."""
        assert self.row_sample is not None
        if self.row_sample.add(body):
            self._end_sample()

    def _end_sample(self) -> None:
        """The sample is complete, or its rows ended: hand it over; rows pass untouched again."""
        assert self.sampler is not None and self.row_sample is not None
        self.sampler.finish(self.row_sample)
        self.row_sample = None
        self.rows_ok = True

    def _sample_answer(self, data: bytes, columns: list[tuple[int, int]]) -> None:
        """Sample the first result of a whole answer the hot path took (`whole_answer`), whose
        fields are `columns`: its rows are the first DataRows of `data`."""
        assert self.sampler is not None
        sample = self.sampler.begin(self.sample_database, columns, self.lexing.codec)
        if sample is None:
            return
        pos, size = 0, len(data)
        while pos < size:
            type_byte = data[pos]
            end = pos + 1 + _unpack_length(data, pos + 1)[0]
            if type_byte == _DATA_ROW:
                if sample.add(data[pos + 5:end]):
                    break
            elif type_byte == _COMMAND_COMPLETE:
                break  # the result ended
            pos = end
        self.sampler.finish(sample)

    def _mask_rows(self, expect: Expect, mask: MaskSpec, permitted: frozenset[tuple[int, int]]) -> None:
        """Masked rows: every tagged column the execution reads must be a plain column of its
        result (table oid, attnum in the RowDescription) of a base table, or the result is
        refused; those columns' values are masked in every row."""
        fields = expect.fields
        shown = {(oid, attnum) for oid, attnum, _ in fields or ()}
        hidden = sorted(c for c in permitted if c not in shown or c not in mask.tagged)
        if fields is None or hidden:
            self._refuse_masked(expect, [f"{oid}.{attnum}" for oid, attnum in hidden] or ["(columns unknown)"],
                                "pgproxy refused a masked result: a tagged column the statement reads is not a plain "
                                "column of a table in its result, so it cannot be masked")
            return
        self.row_mask = mask.rows(fields, self.lexing.codec)
        self.rows_ok = False  # each row goes through `masked`

    def _mask_copy(self, expect: Expect, permitted: frozenset[tuple[int, int]], body: bytes) -> None:
        """A masked COPY TO STDOUT began: its rows are masked as the analysis read its columns,
        when the server's CopyOutResponse agrees (that many columns, all in the format the
        statement asked for: text for text and CSV, binary for binary); else refused."""
        mask, spec = expect.mask, expect.copy
        assert mask is not None
        if spec is None:
            if permitted:
                self._refuse_masked(expect, ["(COPY columns unknown)"],
                                    "pgproxy refused a masked COPY whose columns it cannot map")
            return
        response = m.decode_copy_response(body)
        wanted = 1 if spec.format.binary else 0
        if response.overall_format != wanted or len(response.column_formats) != len(spec.columns) \
                or any(f != wanted for f in response.column_formats):
            self._refuse_masked(expect, [f"{len(response.column_formats)} columns"],
                                "pgproxy refused a masked COPY: the server's columns are not the ones pgproxy "
                                f"resolved ({len(spec.columns)} {'binary' if wanted else 'text'} columns)")
            return
        self.copy_mask = mask.copy(spec, self.lexing.codec)
        self.rows_ok = False

    def _refuse_masked(self, expect: Expect, columns: list[str], message: str) -> None:
        self.refusals.append(GuardRefusal(columns, message))
        self.guarding = True
        self.rows_ok = False
        self.row_mask = self.copy_mask = None
        if expect.phase == _P_ROWS:
            expect.phase = _P_REFUSED

    def _pop(self) -> Expect:
        expect = self.queue.popleft()
        self._activate()
        return expect

    def _desync(self, type_byte: int, expected: str) -> Desync:
        return Desync(f"the server sent {chr(type_byte)!r} where pgproxy expected {expected}")

    def answer(self, type_byte: int, body: bytes) -> bytes | None:
        """Follow one server message (not a DataRow while `rows_ok`). Returns None to forward it
        as it is, or the bytes to send the client instead (b"" to drop it)."""
        if type_byte in _ASYNC:
            if type_byte == m.PARAMETER_STATUS:
                self.parameter_status(body)
            return None
        if self.row_sample is not None:
            self._end_sample()  # the rows of the result being sampled ended
        if not self.queue:
            if type_byte == m.ERROR_RESPONSE:
                return None  # a FATAL error before the server closes (shutdown, terminate)
            raise self._desync(type_byte, "nothing")
        head = self.queue[0]
        if type_byte == m.ERROR_RESPONSE:
            return self._error(head, body)
        out = b"" if self.guarding and type_byte != m.READY_FOR_QUERY else None
        kind = head.kind
        if kind is K.CYCLE:
            self._cycle_answer(head, type_byte, body)
        elif kind is K.EXECUTE:
            self._execute_answer(head, type_byte, body)
        elif kind is K.QUERY:
            self._query_answer(head, type_byte, body)
        elif kind is K.SYNC:
            if type_byte != m.READY_FOR_QUERY:
                if head.maybe:  # the server ignored that Sync (it was reading COPY data)
                    self._pop()
                    return self.answer(type_byte, body)
                raise self._desync(type_byte, "ReadyForQuery")
            self._ready(head, body)
            if head.own:
                return b""
        elif kind is K.PARSE:
            if type_byte != m.PARSE_COMPLETE:
                raise self._desync(type_byte, "ParseComplete")
            assert head.statement is not None
            if self.strict and head.name in self.confirmed.statements and head.name != "":
                raise self._desync(type_byte, "an error (the statement name is taken)")
            self.confirmed.set_statement(head.name, head.statement, head.segment)
            self._pop()
            if head.own:
                return b""
        elif kind is K.BIND:
            if type_byte != m.BIND_COMPLETE:
                raise self._desync(type_byte, "BindComplete")
            if not head.expect_ok:
                if self.strict:
                    raise self._desync(type_byte, "an error (no such statement, or the portal name is taken)")
            elif head.portal is not None:
                self.confirmed.add_portal(head.name, head.portal, head.segment)
            self._pop()
        elif kind is K.DESCRIBE:
            out = self._describe_answer(head, type_byte, body, out)
        elif kind is K.CLOSE:
            if type_byte != m.CLOSE_COMPLETE:
                raise self._desync(type_byte, "CloseComplete")
            if head.describe_kind == "S":
                self.confirmed.drop_statement(head.name, head.segment)
            else:
                self.confirmed.drop_portal(head.name, head.segment)
            self._pop()
            if head.own:
                return b""
        elif kind is K.FUNCTION:
            if type_byte == m.FUNCTION_CALL_RESPONSE and head.phase == _P_START:
                head.phase = _P_WAIT_READY
            elif type_byte == m.READY_FOR_QUERY:
                self._ready(head, body)
            else:
                raise self._desync(type_byte, "FunctionCallResponse")
        else:  # K.PROBE
            raise self._desync(type_byte, "the error pgproxy provoked")
        return out

    def parameter_status(self, body: bytes) -> None:
        """The server reported a setting: follow the ones that decide how it reads text."""
        status = m.decode_parameter_status(body)
        if status.name == "application_name":
            self.application_name = status.value  # set at startup, or later (SET, as pgjdbc does)
        problem = self.lexing.report(status.name, status.value, strict=self.strict)
        if problem is not None:
            raise Desync(problem)

    def _describe_answer(self, head: Expect, type_byte: int, body: bytes, out: bytes | None) -> bytes | None:
        if head.describe_kind == "S" and head.phase == _P_START:
            if type_byte != m.PARAMETER_DESCRIPTION:
                raise self._desync(type_byte, "ParameterDescription")
            head.phase = _P_DESCRIBED
            if head.statement is not None:
                with contextlib.suppress(ValueError, struct.error):  # the types only label values for reviewers
                    head.statement.param_types = decode_parameter_description(body)
            return out
        if type_byte == m.ROW_DESCRIPTION:
            columns: list[tuple[int, int]] = table_columns(body)
        elif type_byte == m.NO_DATA:
            columns = []
        else:
            raise self._desync(type_byte, "RowDescription or NoData")
        if head.statement is not None:
            head.statement.columns = columns
        if head.portal is not None:
            head.portal.columns = columns
        if head.feeds is not None:
            head.feeds.fields = m.row_description_fields(body) if type_byte == m.ROW_DESCRIPTION else []
        self._pop()
        return b"" if head.own else out

    def whole_answer(self, data: bytes, longest: int) -> bool:
        """The server's hot path: `data` (one read of whole messages, each at most `longest`
        bytes with its length field) is all the rest of the answer to the one outstanding
        simple Query whose statements need no following (`query(None)`) or quick cycle, and
        its results pass the result guard. Then the model takes it as `answer` would, message
        by message, and True is returned; otherwise nothing is changed and False is returned."""
        if len(self.queue) != 1 or self.guarding:
            return False
        head = self.queue[0]
        cycle = head.kind is K.CYCLE
        query = head.kind is K.QUERY and head.parts is None and head.phase == _P_START
        if not ((cycle and head.index == 0) or query):
            return False
        size = len(data)
        pos = 0
        step = 0  # CYCLE: as in _cycle_answer; QUERY: 0 before a result, 2 in rows
        ran = False
        columns: list[tuple[int, int]] | None = None
        first: list[tuple[int, int]] | None = None  # the first result's columns (run-time sampling)
        ready = -1
        unpack = _unpack_length
        data_row, command_complete, ready_for_query = _DATA_ROW, _COMMAND_COMPLETE, _READY_FOR_QUERY
        while pos < size:
            if size - pos < 5 or ready >= 0:
                return False
            type_byte = data[pos]
            (length,) = unpack(data, pos + 1)
            end = pos + 1 + length
            if length < 4 or length > longest or end > size:
                return False
            if type_byte == data_row:
                if step != 2:
                    return False
            elif type_byte == command_complete:
                if cycle:
                    if step != 2:
                        return False
                    step = 3
                else:
                    step = 0
                    ran = True
            elif type_byte == ready_for_query:
                if step != (3 if cycle else 0) or length != 5:
                    return False
                ready = pos
            elif type_byte == _ROW_DESCRIPTION:
                if step != (1 if cycle else 0):
                    return False
                if self.guard is not None:
                    columns = table_columns(data[pos + 5:end])
                    if self._refuses(columns, head.permitted if cycle else frozenset()):
                        return False
                    if first is None:
                        first = columns
                step = 2
            elif type_byte == _BIND_COMPLETE and cycle and step == 0:
                step = 1 if head.described else 2
                if step == 2:
                    assert head.statement is not None
                    columns = first = head.statement.columns
                    if self._refuses(columns, head.permitted):
                        return False
            elif type_byte == _NO_DATA and cycle and step == 1:
                columns = []
                step = 2
            elif type_byte == _EMPTY_QUERY_RESPONSE and step == (2 if cycle else 0):
                step = 3 if cycle else 0
                ran = True
            elif type_byte not in _PASSED_ALONG:
                return False
            pos = end
        if ready < 0:
            return False
        if cycle and head.described and head.statement is not None and columns is not None:
            head.statement.columns = columns
        if self.sampler is not None and first and self.sampler.due():
            self._sample_answer(data, first)
        head.ran = head.ran or ran
        self._ready(head, data[ready + 5:ready + 6])
        return True

    def _refuses(self, columns: list[tuple[int, int]] | None, permitted: frozenset[tuple[int, int]]) -> bool:
        if self.guard is None:
            return False
        return columns is None or bool(columns and self.guard(columns, permitted))

    def _cycle_answer(self, head: Expect, type_byte: int, body: bytes) -> None:
        """The answers to a quick_cycle, step by step (`index`): BindComplete; RowDescription or
        NoData if described; rows and CommandComplete (or EmptyQueryResponse); ReadyForQuery."""
        step = head.index
        if step == 0 and type_byte == m.BIND_COMPLETE:
            if head.described:
                head.index = 1
            else:
                head.index = 2
                assert head.statement is not None
                self._guard(head, head.statement.columns, head.permitted)
        elif step == 1 and (type_byte == m.ROW_DESCRIPTION or type_byte == m.NO_DATA):
            assert head.statement is not None
            columns = table_columns(body) if type_byte == m.ROW_DESCRIPTION else []
            head.statement.columns = columns
            head.index = 2
            self._guard(head, columns, head.permitted)
        elif step == 2 and (type_byte == m.COMMAND_COMPLETE or type_byte == m.EMPTY_QUERY_RESPONSE):
            head.index = 3
            self.rows_ok = False
        elif step == 3 and type_byte == m.READY_FOR_QUERY:
            self._ready(head, body)
        else:
            raise self._desync(type_byte, "the answer to Bind, Describe, Execute and Sync")

    def _execute_answer(self, head: Expect, type_byte: int, body: bytes) -> None:
        if not head.expect_ok and self.strict:
            raise self._desync(type_byte, "an error (no such portal, or its transaction block is aborted)")
        phase = head.phase
        if type_byte == m.DATA_ROW and phase in (_P_ROWS, _P_REFUSED):
            return
        if type_byte == m.COMMAND_COMPLETE and phase != _P_COPY_IN:
            if head.op is not None and self.confirmed.touches(head.op):
                self.confirmed.apply(head.op, head.segment, tag=body)
            self._pop()
        elif type_byte == m.PORTAL_SUSPENDED or type_byte == m.EMPTY_QUERY_RESPONSE:
            self._pop()
        elif type_byte == m.COPY_IN_RESPONSE and phase in (_P_START, _P_ROWS):
            head.phase = _P_COPY_IN
            self._copy_started()
        elif type_byte == m.COPY_OUT_RESPONSE and phase in (_P_START, _P_ROWS):
            head.phase = _P_COPY_OUT
            self.row_mask = None
            self.rows_ok = not self.guarding  # CopyData passes as rows do (the relay does not look at them)
            if head.mask is not None:
                self._mask_copy(head, head.permitted, body)
        elif (type_byte == m.COPY_DATA or type_byte == m.COPY_DONE) and phase == _P_COPY_OUT:
            self._copy_rows(type_byte)
        elif type_byte == m.COMMAND_COMPLETE:  # after COPY IN
            self._copy_done()
            self._pop()
        else:
            raise self._desync(type_byte, "the rows and completion of an Execute")

    def _copy_rows(self, type_byte: int) -> None:
        """CopyData pass as rows do (the relay does not look at them), unless they are masked
        or refused; after CopyDone none may come (and a masked binary COPY must be whole)."""
        if type_byte == m.COPY_DONE:
            if self.copy_mask is not None:
                try:
                    self.copy_mask.finish()
                except ValueError as exc:
                    raise Desync(f"pgproxy could not mask a row: {exc}") from None
            self.copy_mask = None
        self.rows_ok = type_byte == m.COPY_DATA and not self.guarding and self.copy_mask is None

    def _copy_started(self) -> None:
        """COPY FROM STDIN began: Syncs the client sent before its CopyDone are read by the
        server while it reads COPY data, which ignores them (unless the COPY fails first)."""
        self.copy_in = True
        for expect in list(self.queue)[1:]:
            if expect.kind is K.COPY_END:
                self.copy_in = False
                break
            if expect.kind is K.SYNC:
                expect.maybe = True

    def _copy_done(self) -> None:
        """COPY FROM STDIN completed: the Syncs sent before the CopyDone were read during the COPY
        and ignored; they will get no ReadyForQuery."""
        kept: list[Expect] = [self.queue[0]]
        rest = list(self.queue)[1:]
        for index, expect in enumerate(rest):
            if expect.kind is K.COPY_END:
                kept += rest[index:]
                break
            if not (expect.kind is K.SYNC and expect.maybe):
                kept.append(expect)
        self.queue = deque(kept)

    def _query_answer(self, head: Expect, type_byte: int, body: bytes) -> None:
        phase = head.phase
        parts = head.parts
        if type_byte == m.READY_FOR_QUERY:
            if parts is not None and phase != _P_WAIT_READY and head.index < len(parts) and self.strict:
                raise self._desync(type_byte, f"the results of {len(parts)} statements")
            self._ready(head, body)
            return
        if phase == _P_WAIT_READY:
            raise self._desync(type_byte, "ReadyForQuery")
        if parts is not None and head.index >= len(parts) and not (type_byte == m.EMPTY_QUERY_RESPONSE and not parts):
                raise self._desync(type_byte, f"no more than {len(parts)} statements")
        part = parts[head.index] if parts is not None and head.index < len(parts) else None
        if type_byte == m.DATA_ROW and phase in (_P_ROWS, _P_REFUSED):
            return
        head.ran = True
        if type_byte == m.ROW_DESCRIPTION and phase == _P_START:
            columns = table_columns(body)
            head.mask = part.mask if part is not None else None
            if head.mask is not None:
                head.fields = m.row_description_fields(body)
            self._guard(head, columns, part.permitted if part is not None else frozenset())
        elif type_byte == m.COMMAND_COMPLETE:
            if phase == _P_COPY_IN:
                self._copy_done()
            if part is not None and part.op is not None and self.confirmed.touches(part.op):
                self.confirmed.apply(part.op, head.segment, tag=body)
            head.index += 1
            head.phase = _P_START
            self.rows_ok = False
            self.row_mask = self.copy_mask = None
            if parts is not None and head.index >= len(parts):
                head.phase = _P_WAIT_READY
        elif type_byte == m.EMPTY_QUERY_RESPONSE and phase == _P_START:
            head.phase = _P_WAIT_READY
        elif type_byte == m.COPY_IN_RESPONSE and phase == _P_START:
            head.phase = _P_COPY_IN
            self._copy_started()
        elif type_byte == m.COPY_OUT_RESPONSE and phase == _P_START:
            head.phase = _P_COPY_OUT
            self.rows_ok = not self.guarding  # CopyData passes as rows do (the relay does not look at them)
            head.mask = part.mask if part is not None else None
            head.copy = part.copy if part is not None else None
            if head.mask is not None:
                self._mask_copy(head, part.permitted if part is not None else frozenset(), body)
        elif (type_byte == m.COPY_DATA or type_byte == m.COPY_DONE) and phase == _P_COPY_OUT:
            self._copy_rows(type_byte)
        else:
            raise self._desync(type_byte, "a statement's result")

    def _ready(self, head: Expect, body: bytes) -> None:
        """ReadyForQuery ends a Sync, Query or FunctionCall: the implicit transaction ends,
        and the transaction status must be the one the model expects."""
        objects = self.confirmed
        if (body == b"I" and head.parts is None and not objects.in_block and not objects.frames
                and (head.kind is K.CYCLE or (head.kind is K.QUERY and "" not in objects.statements
                                              and "" not in objects.portals))):
            # The usual end of a cycle outside a block, in fewer steps: nothing was open and
            # nothing is (the general path below would change nothing else).
            if head.segment > self.confirmed_segment:
                self.confirmed_segment = head.segment
            self.guarding = False
            self.queue.popleft()
            if self.queue:
                self._activate()
            else:
                self.rows_ok = False
                if self.lexing.pending or self.lexing.in_block:
                    self.lexing.settle("I")
            return
        status = _STATUS.get(body)
        if status is None:
            raise Desync("the server sent an invalid ReadyForQuery")
        segment = head.segment
        kind = head.kind
        if kind is K.QUERY:
            if "" in objects.statements:
                objects.drop_statement("", segment)
            if "" in objects.portals:
                if head.ran:
                    objects.drop_portal("", segment)
                else:
                    objects.doubt("", segment)
        in_block = status != "I"
        failed = status == "E"
        if (objects.in_block != in_block or objects.failed != failed) and self.strict and head.parts is not None:
            raise Desync(f"the server's transaction status is {status!r}, which pgproxy did not expect")
        if in_block:
            if kind is K.CYCLE:
                raise Desync(f"the server's transaction status is {status!r} after a statement run outside a block")
            if not objects.frames:
                objects.begin()
        elif objects.frames:
            objects.end_transaction(True, segment)
        objects.in_block = in_block
        objects.failed = failed
        if segment > self.confirmed_segment:
            self.confirmed_segment = segment
        self.guarding = False
        self._pop()
        if not self.queue:
            self.lexing.settle(status)
            predicted = self.predicted
            if (predicted.in_block != in_block or predicted.failed != failed
                    or len(predicted.portals) != len(objects.portals)
                    or len(predicted.statements) != len(objects.statements)):
                # Nothing is outstanding, so the prediction must be the server's state: where it
                # is not (a statement pgproxy could not follow), the server's state wins.
                self._rebuild()

    def _error(self, head: Expect, body: bytes) -> bytes | None:
        """An ErrorResponse: the message at the head failed. Its effect never happened (with
        the server's exceptions for unnamed objects); after an extended-protocol message the
        server skips everything up to Sync."""
        out: bytes | None = b"" if self.guarding else None
        objects = self.confirmed
        kind = head.kind
        if kind is K.PROBE:
            try:
                code = m.decode_fields(body).get("C")
            except m.MessageFormatError:
                code = None
            # 26000: the reserved name does not exist, as intended. 57014: a CancelRequest the
            # client sent meanwhile (forwarded: its statement had left pgproxy's hands) reached
            # the server as it answered the probe; the server failed at that point all the same.
            if code not in ("26000", "57014"):
                raise Desync("the server answered pgproxy's refusal with an unexpected error")
            out = head.error
        elif kind is K.PARSE and head.name == "":
            objects.drop_statement("", head.segment)  # dropped before the new one was parsed
        elif kind is K.PARSE and head.asked:
            self.refused_by_server = True
            for expect in self.queue:  # the Sync's ReadyForQuery ends the client's Query
                if expect.kind is K.SYNC:
                    expect.own = False
                    break
        elif kind is K.BIND and head.name == "":
            objects.doubt("", head.segment)  # it may have been replaced before the error
        elif kind is K.EXECUTE:
            objects.doubt(head.name, head.segment)
        elif kind is K.QUERY and not head.ran:
            objects.doubt("", head.segment)
        self.rows_ok = False
        if kind is K.CYCLE:
            # Whatever failed, the rest up to the Sync is skipped; outside a block nothing stays.
            objects.error(head.segment)
            head.index = 3
            return out
        if kind in _EXTENDED:
            objects.error(head.segment)
            self.copy_in = False
            self.queue.popleft()
            while self.queue and self.queue[0].kind is not K.SYNC:
                self.queue.popleft()  # skipped by the server: no answer will come
            if self.queue:
                self.queue[0].maybe = False
            else:
                self.doomed = True  # the server skips what the client sends until its Sync
        elif kind is K.QUERY or kind is K.FUNCTION or kind is K.SYNC:
            # A simple Query stops at its failed statement; a Sync's commit can fail too.
            objects.error(head.segment)
            self.copy_in = False
            head.phase = _P_WAIT_READY
            head.ran = head.ran or kind is not K.QUERY
        else:  # K.COPY_END cannot be the head here
            raise Desync("the server sent an error pgproxy cannot place")
        self.row_mask = self.copy_mask = None
        self._rebuild()
        self._activate()
        return out

    # -- what executes ---------------------------------------------------------------------

    def runs(self, statement: PreparedStatement) -> tuple[PreparedStatement | Portal | None, bool]:
        """For a statement that runs another object (EXECUTE x, FETCH c): that object as the
        next message would find it, and whether that is certain. (None, True) otherwise."""
        op = statement.op
        if op is None or op.kind not in REFERENCES:
            return None, True
        if op.kind is OpKind.EXECUTE:
            return self.statement(op.name)
        return self.portal(op.name)
