"""The protocol model without any I/O: message tables, each with the belief expected after it.

Each step is a client message the relay forwards (model method and arguments) or a server
answer (type byte and body); after the steps, the confirmed statements and portals must be
exactly the ones listed. The lifetimes are PostgreSQL's (see pgproxy/protocol/objects.py);
tests/test_portals.py and the differential tests check the same rules against the server.
"""

from __future__ import annotations

import ast as pyast
from typing import Any

import pytest

from pgproxy.protocol import Desync, OpKind, ProtocolModel, QueryPart, SessionOp
from pgproxy.protocol.model import K
from pgproxy.protocol.objects import PreparedStatement
from pgproxy.wire import messages as m


def _stmt(sql: str) -> PreparedStatement:
    return PreparedStatement(sql)


def _error(code: str = "42000") -> bytes:
    return m.ErrorResponse.make("ERROR", code, "failed").encode()[5:]


def _complete(tag: str) -> bytes:
    return tag.encode() + b"\0"


OK = {K.PARSE: (m.PARSE_COMPLETE, b""), K.BIND: (m.BIND_COMPLETE, b""), K.CLOSE: (m.CLOSE_COMPLETE, b"")}


def run(steps: list[tuple[Any, ...]], model: ProtocolModel | None = None) -> ProtocolModel:
    """Steps: ("parse", name, sql) / ("bind", portal, statement) / ("execute", portal) /
    ("close", kind, name) / ("sync",) / ("query", [ops]) as client messages; ("<", type_byte, body)
    as a server answer; ("ok",) answers the head message with its success."""
    model = model or ProtocolModel(strict=True)
    for step in steps:
        kind = step[0]
        if kind == "parse":
            model.parse(step[1], _stmt(step[2]))
        elif kind == "bind":
            model.bind(step[1], step[2], b"")
        elif kind == "execute":
            portal = model.portal(step[1])[0]
            model.execute(step[1], portal, frozenset())
        elif kind == "close":
            model.close(step[1], step[2])
        elif kind == "sync":
            model.sync()
        elif kind == "query":
            model.query([QueryPart(op) for op in step[1]])
        elif kind == "<":
            model.answer(step[1], step[2])
        elif kind == "ok":
            head = model.queue[0]
            model.answer(*OK[head.kind])
        else:
            raise AssertionError(step)
    return model


def ready(status: str = "I") -> tuple[Any, ...]:
    return ("<", m.READY_FOR_QUERY, status.encode())


def belief(model: ProtocolModel) -> tuple[dict[str, str], dict[str, str]]:
    objects = model.confirmed
    return ({n: s.sql for n, s in objects.statements.items()},
            {n: p.statement.sql for n, p in objects.portals.items()})


def op(kind: OpKind, name: str = "", **fields: Any) -> SessionOp:
    return SessionOp(kind, name, **fields)


TABLES: list[tuple[str, list[tuple[Any, ...]], dict[str, str], dict[str, str]]] = [
    ("unnamed Parse replaces the unnamed statement; a portal keeps its snapshot",
     [("parse", "", "A"), ("bind", "", ""), ("parse", "", "B"), ("sync",), ("query", [op(OpKind.BEGIN)]),
      ("ok",), ("ok",), ("ok",), ready(), ("<", m.COMMAND_COMPLETE, _complete("BEGIN")), ready("T")],
     {}, {}),
    ("a failed duplicate Parse changes nothing",
     [("parse", "s", "A"), ("sync",), ("ok",), ready(), ("parse", "s", "B"), ("sync",),
      ("<", m.ERROR_RESPONSE, _error("42P05")), ready()],
     {"s": "A"}, {}),
    ("a failed unnamed Parse drops the old unnamed statement",
     [("parse", "", "A"), ("sync",), ("ok",), ready(), ("parse", "", "bad"), ("sync",),
      ("<", m.ERROR_RESPONSE, _error("42601")), ready()],
     {}, {}),
    ("portals end with the implicit transaction at Sync",
     [("parse", "s", "A"), ("bind", "p", "s"), ("sync",), ("ok",), ("ok",), ready()],
     {"s": "A"}, {}),
    ("inside a block portals survive Sync; Close of the statement leaves the portal",
     [("query", [op(OpKind.BEGIN)]), ("<", m.COMMAND_COMPLETE, _complete("BEGIN")), ready("T"),
      ("parse", "s", "A"), ("bind", "p", "s"), ("close", "S", "s"), ("sync",), ("ok",), ("ok",), ("ok",),
      ready("T")],
     {}, {"p": "A"}),
    ("after an error everything up to Sync is skipped (the Close never happened)",
     [("query", [op(OpKind.BEGIN)]), ("<", m.COMMAND_COMPLETE, _complete("BEGIN")), ready("T"),
      ("parse", "s", "A"), ("bind", "p", "s"), ("sync",), ("ok",), ("ok",), ready("T"),
      ("query", [op(OpKind.SAVEPOINT, "a")]), ("<", m.COMMAND_COMPLETE, _complete("SAVEPOINT")), ready("T"),
      ("parse", "", "1/0"), ("bind", "", ""), ("execute", ""), ("close", "P", "p"), ("sync",),
      ("ok",), ("ok",), ("<", m.ERROR_RESPONSE, _error("22012")), ready("E"),
      ("query", [op(OpKind.ROLLBACK_TO, "a")]), ("<", m.COMMAND_COMPLETE, _complete("ROLLBACK")), ready("T")],
     {"s": "A"}, {"p": "A"}),  # (the simple Query dropped the unnamed statement)
    ("ROLLBACK TO drops the portals created since the savepoint",
     [("query", [op(OpKind.BEGIN), op(OpKind.SAVEPOINT, "a")]), ("<", m.COMMAND_COMPLETE, _complete("BEGIN")),
      ("<", m.COMMAND_COMPLETE, _complete("SAVEPOINT")), ready("T"),
      ("parse", "s", "A"), ("bind", "p", "s"), ("sync",), ("ok",), ("ok",), ready("T"),
      ("query", [op(OpKind.ROLLBACK_TO, "a")]), ("<", m.COMMAND_COMPLETE, _complete("ROLLBACK")), ready("T")],
     {"s": "A"}, {}),
    ("RELEASE hands portals to the parent; COMMIT ends them, except WITH HOLD cursors",
     [("query", [op(OpKind.BEGIN), op(OpKind.SAVEPOINT, "a"), op(OpKind.DECLARE, "c", hold=True, query="H"),
                 op(OpKind.DECLARE, "d", query="D"), op(OpKind.RELEASE, "a"), op(OpKind.COMMIT)]),
      *[("<", m.COMMAND_COMPLETE, _complete(t)) for t in ("BEGIN", "SAVEPOINT", "DECLARE CURSOR",
                                                            "DECLARE CURSOR", "RELEASE", "COMMIT")],
      ready()],
     {}, {"c": "H"}),
    ("a COMMIT that rolled back (aborted block) drops WITH HOLD cursors too",
     [("query", [op(OpKind.BEGIN), op(OpKind.DECLARE, "c", hold=True, query="H")]),
      ("<", m.COMMAND_COMPLETE, _complete("BEGIN")), ("<", m.COMMAND_COMPLETE, _complete("DECLARE CURSOR")),
      ready("T"), ("query", [None]), ("<", m.ERROR_RESPONSE, _error()), ready("E"),
      ("query", [op(OpKind.COMMIT)]), ("<", m.COMMAND_COMPLETE, _complete("ROLLBACK")), ready()],
     {}, {}),
    ("PREPARE, DEALLOCATE ALL (the unnamed statement stays), DISCARD ALL",
     [("parse", "", "U"), ("sync",), ("ok",), ready(),
      ("query", [op(OpKind.PREPARE, "x", query="X"), op(OpKind.PREPARE, "y", query="Y"),
                 op(OpKind.DEALLOCATE, "x")]),
      *[("<", m.COMMAND_COMPLETE, _complete(t)) for t in ("PREPARE", "PREPARE", "DEALLOCATE")], ready()],
     {"y": "Y"}, {}),
    ("a simple Query drops the unnamed statement",
     [("parse", "", "U"), ("parse", "n", "N"), ("sync",), ("ok",), ("ok",), ready(),
      ("query", [None]), ("<", m.COMMAND_COMPLETE, _complete("SELECT 1")), ready()],
     {"n": "N"}, {}),
    ("Bind to the unnamed portal replaces it (inside a block, where portals outlive Sync)",
     [("query", [op(OpKind.BEGIN)]), ("<", m.COMMAND_COMPLETE, _complete("BEGIN")), ready("T"),
      ("parse", "a", "A"), ("parse", "b", "B"), ("bind", "", "a"), ("bind", "", "b"), ("sync",),
      ("ok",), ("ok",), ("ok",), ("ok",), ready("T")],
     {"a": "A", "b": "B"}, {"": "B"}),
    ("Bind to a named portal that exists fails (42P03) and changes nothing",
     [("query", [op(OpKind.BEGIN)]), ("<", m.COMMAND_COMPLETE, _complete("BEGIN")), ready("T"),
      ("parse", "a", "A"), ("parse", "b", "B"), ("bind", "p", "a"), ("sync",), ("ok",), ("ok",), ("ok",),
      ready("T"), ("bind", "p", "b"), ("sync",), ("<", m.ERROR_RESPONSE, _error("42P03")), ready("E")],
     {"a": "A", "b": "B"}, {"p": "A"}),
    ("a failed Bind to a missing statement changes nothing",
     [("bind", "", "missing"), ("sync",), ("<", m.ERROR_RESPONSE, _error("26000")), ready()],
     {}, {}),
    ("a simple Query ends the unnamed portal, even inside a block",
     [("query", [op(OpKind.BEGIN)]), ("<", m.COMMAND_COMPLETE, _complete("BEGIN")), ready("T"),
      ("parse", "a", "A"), ("bind", "", "a"), ("bind", "p", "a"), ("sync",), ("ok",), ("ok",), ("ok",),
      ready("T"), ("query", [None]), ("<", m.COMMAND_COMPLETE, _complete("SELECT 1")), ready("T")],
     {"a": "A"}, {"p": "A"}),
    ("CLOSE ALL ends protocol portals too; DISCARD ALL also every named statement",
     [("query", [op(OpKind.BEGIN), op(OpKind.DECLARE, "c", query="C")]),
      ("<", m.COMMAND_COMPLETE, _complete("BEGIN")), ("<", m.COMMAND_COMPLETE, _complete("DECLARE CURSOR")),
      ready("T"), ("parse", "a", "A"), ("bind", "p", "a"), ("sync",), ("ok",), ("ok",), ready("T"),
      ("query", [op(OpKind.CLOSE, all=True), op(OpKind.COMMIT)]),
      ("<", m.COMMAND_COMPLETE, _complete("CLOSE CURSOR ALL")), ("<", m.COMMAND_COMPLETE, _complete("COMMIT")),
      ready(), ("query", [op(OpKind.DISCARD_ALL)]), ("<", m.COMMAND_COMPLETE, _complete("DISCARD ALL")), ready()],
     {}, {}),
    ("FETCH and EXECUTE change nothing; a failed statement of a Query leaves the rest undone",
     [("query", [op(OpKind.PREPARE, "x", query="X"), None, op(OpKind.PREPARE, "y", query="Y")]),
      ("<", m.COMMAND_COMPLETE, _complete("PREPARE")), ("<", m.ERROR_RESPONSE, _error("22012")), ready(),
      ("query", [op(OpKind.EXECUTE, "x"), op(OpKind.FETCH, "nope")]),
      ("<", m.COMMAND_COMPLETE, _complete("SELECT 1")), ("<", m.ERROR_RESPONSE, _error("34000")), ready()],
     {"x": "X"}, {}),
    ("Close of what does not exist succeeds and changes nothing",
     [("close", "S", "nope"), ("close", "P", "nope"), ("sync",), ("ok",), ("ok",), ready()],
     {}, {}),
]


@pytest.mark.parametrize(("title", "steps", "statements", "portals"), TABLES, ids=[t[0] for t in TABLES])
def test_belief_after_each_table(title: str, steps: list[tuple[Any, ...]], statements: dict[str, str],
                                 portals: dict[str, str]) -> None:
    model = run(steps)
    assert belief(model) == (statements, portals)
    assert model.idle


def test_prediction_is_trusted_only_within_its_segment() -> None:
    model = run([("parse", "s", "A"), ("sync",)])
    # "s" changed in a segment whose answer has not come: a later segment must wait.
    assert model.statement("s") == (model.predicted.statements["s"], False)
    model = run([("parse", "s", "A")])
    assert model.statement("s")[1]  # the same segment: if the Parse fails, what follows is skipped
    run([("ok",), ("sync",), ready()], model)
    assert model.statement("s")[1] and model.idle


def test_a_success_the_model_did_not_expect_ends_the_session() -> None:
    model = run([("bind", "", "nope"), ("sync",)])
    with pytest.raises(Desync):
        model.answer(m.BIND_COMPLETE, b"")
    model = run([("execute", "nope"), ("sync",)])
    with pytest.raises(Desync):
        model.answer(m.COMMAND_COMPLETE, _complete("SELECT 1"))
    model = run([("query", [op(OpKind.BEGIN)]), ("<", m.COMMAND_COMPLETE, _complete("BEGIN"))])
    with pytest.raises(Desync):
        model.answer(m.READY_FOR_QUERY, b"I")  # BEGIN succeeded: the status must be T
    with pytest.raises(Desync):
        ProtocolModel().answer(m.PARSE_COMPLETE, b"")  # nothing was asked


def test_the_refusal_error_is_placed_by_position_not_by_text() -> None:
    model = ProtocolModel()
    probe = model.refuse(b"OURS", simple=False)
    assert probe.startswith(b"D") and model.reserved.encode() in probe and model.doomed
    model.sync()
    assert model.answer(m.ERROR_RESPONSE, _error("26000")) == b"OURS"
    model.answer(m.READY_FOR_QUERY, b"I")
    assert model.idle
    # A cancel that reaches the server while it answers the probe fails it at the same point.
    model.refuse(b"OURS", simple=False)
    model.sync()
    assert model.answer(m.ERROR_RESPONSE, _error("57014")) == b"OURS"
    model.answer(m.READY_FOR_QUERY, b"I")
    assert model.idle
    model.refuse(b"OURS", simple=True)
    with pytest.raises(Desync):  # any other answer at that position: out of step
        model.answer(m.ERROR_RESPONSE, _error("42501"))


def test_copy_in_syncs_sent_before_copydone_are_ignored_by_the_server() -> None:
    model = ProtocolModel()
    model.parse("", _stmt("COPY t FROM STDIN"))
    model.bind("", "", b"")
    model.execute("", model.portal("")[0], frozenset())
    model.sync()  # libpq sends it with the Execute, before the COPY data
    for answer in (m.PARSE_COMPLETE, m.BIND_COMPLETE):
        model.answer(answer, b"")
    model.answer(m.COPY_IN_RESPONSE, b"\0\0\0")
    model.copy_end()
    model.sync()
    model.answer(m.COMMAND_COMPLETE, _complete("COPY 1"))
    model.answer(m.READY_FOR_QUERY, b"I")
    assert model.idle


def test_nothing_in_the_model_imports_asyncio() -> None:
    from pathlib import Path

    import pgproxy.protocol

    for path in Path(pgproxy.protocol.__file__).parent.glob("*.py"):
        tree = pyast.parse(path.read_text())
        imported = {alias.name for node in pyast.walk(tree) if isinstance(node, pyast.Import) for alias in node.names}
        imported |= {node.module or "" for node in pyast.walk(tree) if isinstance(node, pyast.ImportFrom)}
        assert not any(name.split(".")[0] == "asyncio" for name in imported), path


def test_without_analysis_unknown_objects_are_followed_leniently() -> None:
    """Pass-through mode does not analyse statements, so SQL PREPARE and DECLARE are unknown to
    it: binding and executing them is followed without ending the session."""
    model = ProtocolModel(strict=False)
    model.query(None)  # e.g. BEGIN; DECLARE c CURSOR FOR ...
    model.answer(m.COMMAND_COMPLETE, _complete("BEGIN"))
    model.answer(m.COMMAND_COMPLETE, _complete("DECLARE CURSOR"))
    model.answer(m.READY_FOR_QUERY, b"T")
    model.execute("c", model.portal("c")[0], frozenset())
    model.sync()
    assert model.rows_ok
    model.answer(m.COMMAND_COMPLETE, _complete("SELECT 0"))
    model.answer(m.READY_FOR_QUERY, b"T")
    assert model.idle and model.transaction_status == "T"


def test_a_failed_statement_of_a_query_is_not_predicted_again() -> None:
    """PREPARE of a name a protocol statement holds fails; the prediction must not keep it."""
    model = run([("parse", "s1", "RISKY"), ("sync",), ("ok",), ready(),
                 ("query", [op(OpKind.PREPARE, "s1", query="BENIGN")]), ("query", [op(OpKind.EXECUTE, "s1")])])
    model.answer(m.ERROR_RESPONSE, _error("42P05"))
    assert model.predicted.statements["s1"].sql == "RISKY"
    model.answer(m.READY_FOR_QUERY, b"I")
    assert model.statement("s1") == (model.confirmed.statements["s1"], True)
