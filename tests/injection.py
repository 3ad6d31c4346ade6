"""Expression-slot injection: a subquery reading a tagged column, placed in every slot of every
corpus statement, one at a time; the analysis must see it (DESIGN.md, "How we test").

The walk is generic: every field of every node (the node classes' ``__slots__``) is a candidate
slot, filled or empty. pglast checks what a field may hold, so a SubLink only goes where the
grammar has a generic node (an expression, a list item); the mutated tree is printed back to SQL
(``RawStream``) and parsed again, and only a text that still holds the probe subquery as an
expression counts as a mutant. PostgreSQL's grammar, not a hand-written list, decides which
positions are expression positions. Besides the policy corpora, injection_seeds.sql holds
grammar they do not show (window frames, XMLTABLE, SQL/JSON, rules, policies, function bodies).

Each mutant is judged on what the analyses of it report (`judge`):

- *seen*: some analysis reports the probe column with its tags;
- *unknown*: some analysis is UNKNOWN (the policy reviews it) because the walker gave up;
- *masked*: UNKNOWN only because the second parser (sqlglot) fails or disagrees, and the
  walker's own findings lack the probe: a walker gap that the cross-check happens to cover;
- *unwalked*: none of that. It is a finding even when the statement is held for another
  reason (DDL, a risky corpus case): a reviewer must be told what it reads.

Plain EXPLAIN plans without running, so by design it reports no reads; its query is analysed on
its own as well, which is where the walker has to see the probe. Unwalked mutants are then run
on PostgreSQL (`Report.confirm`): where its parse analysis refuses any subquery ("cannot use
subquery in index predicate"), the position is no expression slot and not counted.

Run as a report (starts the test's PostgreSQL and proxy through pytest)::

    .venv/bin/python -m tests.injection
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pglast
from pglast import ast
from pglast.stream import RawStream

from pgproxy.analysis.model import Analysis, ColumnKey, Kind
from pgproxy.analysis.schema import Schema
from pgproxy.check import explain
from pgproxy.config import Config
from pgproxy.policy import strictest
from tests import corpus

# Each probe reads one tagged column of the corpus catalog; a case gets the first one its own
# text does not already read (else every mutant of `SELECT ssn ...` would pass for free). The
# names are schema-qualified so that no CTE of the statement can stand in for the table.
PROBE_COLUMNS = (
    (ColumnKey("public", "customers", "ssn"), "public.customers", "ssn"),
    (ColumnKey("crm", "notes", "body"), "crm.notes", "body"),
    (ColumnKey("public", "AuditLog", "Email"), 'public."AuditLog"', '"Email"'),
    (ColumnKey("crm", "contacts", "phone"), "crm.contacts", "phone"),
)
# The same read with another result type, for asking PostgreSQL whether a slot takes a subquery
# at all when the text one is refused for its type ("argument of WHERE must be type boolean").
VARIANTS = {"text": "{}", "boolean": "{} IS NOT NULL", "integer": "length({})"}


@dataclass(frozen=True, slots=True)
class Probe:
    column: ColumnKey
    tags: frozenset[str]
    table: str  # as written in the subquery
    name: str  # the column, as written

    def text(self, variant: str = "text") -> str:
        return f"(SELECT {VARIANTS[variant].format(self.name)} FROM {self.table} LIMIT 1)"

    @property
    def sql(self) -> str:
        return self.text()

    @property
    def node(self) -> Any:
        """The ast.SubLink (EXPR_SUBLINK) put into each slot."""
        return _parse_probe(self.sql)


def probes(schema: Schema) -> list[Probe]:
    """The probes, with the tags the schema gives their columns (all of them must be tagged)."""
    found = []
    for column, table, name in PROBE_COLUMNS:
        relation = schema.relations.get((column.schema, column.table))
        tags = relation.tags.get(column.column, frozenset()) if relation is not None else frozenset()
        if not tags:
            raise ValueError(f"probe column {column} is not tagged in the schema")
        found.append(Probe(column, tags, table, name))
    return found


@functools.cache
def _parse_probe(sql: str) -> Any:
    """The SubLink of a parenthesised subquery (one node for every use: it is never changed)."""
    select = pglast.parse_sql(f"SELECT {sql}")[0].stmt
    assert isinstance(select, ast.SelectStmt) and select.targetList
    node = select.targetList[0].val
    assert isinstance(node, ast.SubLink)
    return node


@dataclass(frozen=True, slots=True)
class Mutant:
    case: corpus.Case
    path: str  # e.g. "SelectStmt.fromClause[0].RangeTableSample.repeatable"
    sql: str
    probe: Probe
    original: str  # the case as printed without the probe

    @property
    def slot(self) -> str:
        """The path without list positions or statement number: the same slot of the grammar."""
        return re.sub(r"\[\d+\]", "", self.path.rsplit(" ", 1)[-1])

    @property
    def site(self) -> str:
        """The statement and the slot's node type and field, e.g. "SelectStmt: RangeTableSample.repeatable"."""
        parts = self.path.rsplit(" ", 1)[-1].split(".")
        return f"{parts[0]}: {'.'.join(parts[-2:]).split('[')[0]}"


@dataclass(slots=True)
class Slot:
    """One field of one node (an item of it, for a list field) where the probe can go."""

    node: Any
    field: str
    index: tuple[int, ...]  # the list item replaced (lists nest: VALUES rows); (0,) fills an empty list
    path: str

    def fill(self, probe: Any) -> Any:
        """Put the probe in; returns what to `restore`. Raises ValueError where pglast's node
        type forbids a generic node (a name, an alias, a type...)."""
        old = getattr(self.node, self.field)
        setattr(self.node, self.field, _replaced(old, self.index, probe))
        return old

    def restore(self, old: Any) -> None:
        setattr(self.node, self.field, old)


def _replaced(value: Any, index: tuple[int, ...], probe: Any) -> Any:
    if not index:
        return probe
    items = list(value or ())
    head, *rest = index
    items[head:head + 1] = [_replaced(items[head] if head < len(items) else None, tuple(rest), probe)]
    return tuple(items)


def slots(node: Any, path: str) -> Iterator[Slot]:
    """Every field of `node` and of the nodes below it, depth first, filled and empty alike."""
    for name in getattr(type(node), "__slots__", ()):
        value = getattr(node, name, None)
        if isinstance(value, (ast.Node, list, tuple)):
            yield from _items(node, name, (), value, f"{path}.{name}")
        elif value is None and _takes_nodes(type(node), name):
            yield Slot(node, name, (0,) if _takes_lists(type(node), name) else (), f"{path}.{name}")


def _items(node: Any, name: str, index: tuple[int, ...], value: Any, path: str) -> Iterator[Slot]:
    if isinstance(value, ast.Node):
        yield Slot(node, name, index, path)
        yield from slots(value, f"{path}.{type(value).__name__}")
    elif isinstance(value, (list, tuple)):
        for number, child in enumerate(value):
            yield from _items(node, name, (*index, number), child, f"{path}[{number}]")


def _c_type(node_type: type[Any], name: str) -> str:
    """The C type of a node field as pglast records it ("Node*", "List*", "Alias*", "char*"...)."""
    return str(getattr(getattr(node_type, "__slots__", {}).get(name), "c_type", ""))


def _takes_nodes(node_type: type[Any], name: str) -> bool:
    return _c_type(node_type, name) in ("Node*", "List*")


def _takes_lists(node_type: type[Any], name: str) -> bool:
    return _c_type(node_type, name) == "List*"


def count_probes(node: Any, probe: Any) -> int:
    """How many times the probe subquery occurs as an expression in the tree."""
    if isinstance(node, (list, tuple)):
        return sum(count_probes(child, probe) for child in node)
    if not isinstance(node, ast.Node):
        return 0
    if node == probe:
        return 1
    return sum(count_probes(getattr(node, name, None), probe) for name in getattr(type(node), "__slots__", ()))


@dataclass(slots=True)
class Tally:
    positions: int = 0  # slots offered (every field of every node, per statement)
    refused: int = 0  # pglast would not hold a SubLink there
    unprintable: int = 0  # RawStream could not print the mutated tree
    unparsable: int = 0  # the printed text does not parse again
    lost: int = 0  # it parses, but the probe is no longer an expression in it
    duplicates: int = 0  # the same text as an earlier mutant of the case


def mutate(case: corpus.Case, probe: Probe, tally: Tally | None = None) -> Iterator[Mutant]:
    """The distinct mutants of one case: the probe in each slot, one at a time.

    Slots that print the same text (a select-list item and its value, a column reference and
    its name) make one mutant, named after the slot that parses back to the very tree that was
    printed: the expression itself rather than what wraps it or what it is made of."""
    tally = tally if tally is not None else Tally()
    try:
        statements: list[Any] = [raw.stmt for raw in pglast.parse_sql(case.sql)]
    except pglast.parser.ParseError:
        return
    node = probe.node
    before = [count_probes(statement, node) for statement in statements]
    printed = [str(RawStream()(statement)) for statement in statements]
    found: dict[str, tuple[str, bool]] = {"; ".join(printed): ("", True)}  # text -> (path, exact)
    for number, statement in enumerate(statements):
        prefix = f"#{number + 1} " if len(statements) > 1 else ""
        for slot in list(slots(statement, prefix + type(statement).__name__)):
            tally.positions += 1
            try:
                old = slot.fill(node)
            except ValueError:
                tally.refused += 1
                continue
            try:
                outcome = _print_and_parse(statement, number, printed, found)
            finally:
                slot.restore(old)
            if isinstance(outcome, str):
                setattr(tally, outcome, getattr(tally, outcome) + 1)
                continue
            sql, again, exact = outcome
            if sql in found:
                tally.duplicates += 1
                if exact:
                    found[sql] = (slot.path, True)
            elif not exact and (len(again) != len(statements)
                                or count_probes(again[number].stmt, node) <= before[number]):
                tally.lost += 1
            else:
                found[sql] = (slot.path, exact)
    for sql, (path, _) in list(found.items())[1:]:
        yield Mutant(case, path, sql, probe, "; ".join(printed))


def _print_and_parse(statement: Any, number: int, printed: list[str],
                     found: dict[str, tuple[str, bool]]) -> tuple[str, Any, bool] | str:
    """The mutated query string, its statements parsed again and whether the mutated statement
    parses back to itself; or the Tally field that says why there is no mutant."""
    try:
        text = str(RawStream()(statement))
    except Exception:  # the printer has no form for this tree
        return "unprintable"
    sql = "; ".join([*printed[:number], text, *printed[number + 1:]])
    if found.get(sql, ("", False))[1]:
        return sql, (), False  # a known mutant, already named after its exact slot
    try:
        again = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        return "unparsable"
    return sql, again, len(again) == len(printed) and again[number].stmt == statement


# --- judging ----------------------------------------------------------------------------------

Explainer = Callable[[str], tuple[list[Analysis], str]]  # SQL -> (its analyses, the action)
# (a mutant, the SQL to run for it) -> None when PostgreSQL runs the SQL, else "SQLSTATE: message"
# (or "not run: why").
ServerCheck = Callable[[Mutant, str], str | None]


def evidence(sql: str, explainer: Explainer) -> tuple[list[Analysis], str]:
    """Every analysis that speaks for `sql` (what PREPARE/DECLARE keep, EXPLAIN's query
    analysed on its own) and the action the policy gives it."""
    analyses, action = explainer(sql)
    found: list[Analysis] = []
    pending = list(analyses)
    while pending:
        analysis = pending.pop()
        found.append(analysis)
        if analysis.stored is not None:
            pending.append(analysis.stored)
    if any(a.command == "EXPLAIN" for a in found):
        for raw in pglast.parse_sql(sql):
            if isinstance(raw.stmt, ast.ExplainStmt) and raw.stmt.query is not None:
                found += explainer(str(RawStream()(raw.stmt.query)))[0]
    return found, action


def reads(analyses: Sequence[Analysis], probe: Probe) -> bool:
    return any(a.reads.get(probe.column) == probe.tags for a in analyses)


# An UNKNOWN from the cross-check keeps what the walker found: when the probe is not among it,
# the walker missed the slot and only the second parser's failure holds the statement.
_CROSSCHECK = ("second parser (sqlglot)", "the two parsers disagree")


@dataclass(frozen=True, slots=True)
class Verdict:
    mutant: Mutant
    outcome: str  # "seen" | "unknown" | "masked" (UNKNOWN by the cross-check only) | "unwalked"
    action: str
    why: str = ""  # the first reason of an UNKNOWN analysis
    server: str | None = None  # what PostgreSQL said to an unwalked mutant ("SQLSTATE: message")


def judge(mutant: Mutant, explainer: Explainer) -> Verdict:
    analyses, action = evidence(mutant.sql, explainer)
    unknown = [a for a in analyses if a.kind is Kind.UNKNOWN]
    if reads(analyses, mutant.probe):
        outcome = "seen"
    elif unknown and all(r.startswith(_CROSSCHECK) for a in unknown for r in a.reasons):
        outcome = "masked"
    elif unknown:
        outcome = "unknown"
    else:
        outcome = "unwalked"
    return Verdict(mutant, outcome, action, next((r for a in unknown for r in a.reasons), ""))


def refuses_subquery(answer: str | None, unmutated: Callable[[], str | None]) -> bool:
    """PostgreSQL's parse analysis refuses any subquery in that position ("cannot use subquery
    in index predicate", "type modifier is not allowed for type"): it is no expression slot.
    Not proof of that: a type mismatch (another subquery would do), a runtime error, a statement
    that was not run, a syntax error of the server's grammar (pglast's may be newer: what it
    parses, the proxy must judge), or an error the unmutated statement gets too."""
    if answer is None:
        return False
    if answer.startswith("0A000") and "cannot use subquery" in answer:
        return True
    if answer.startswith("42601") and "syntax error" not in answer:
        before = unmutated()
        return before is None or not before.startswith("42601")
    return False


OUTCOMES = ("seen", "unknown", "masked", "no site", "unwalked")


@dataclass(slots=True)
class Report:
    tried: Counter[str] = field(default_factory=Counter)  # corpus -> mutants analysed
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (corpus, outcome) -> count
    unprobed: list[str] = field(default_factory=list)  # cases that already read every probe column
    unwalked: list[Verdict] = field(default_factory=list)
    masked: list[Verdict] = field(default_factory=list)
    unknown: list[Verdict] = field(default_factory=list)
    not_slots: list[Verdict] = field(default_factory=list)  # unwalked, but the server refuses a subquery there
    tally: Tally = field(default_factory=Tally)

    @property
    def total(self) -> int:
        return sum(self.tried.values())

    def confirm(self, server: ServerCheck) -> None:
        """Ask PostgreSQL about every unwalked mutant (its probe as text, boolean and integer);
        drop those whose position takes no subquery (`refuses_subquery`). Whether a position
        takes one is the grammar's business (PostgreSQL checks it by the kind of expression),
        so a refusal holds for the same path in every case: a mutant the server cannot run in a
        transaction block (CREATE INDEX CONCURRENTLY) goes by what it said to the same slot elsewhere."""
        unmutated: dict[str, str | None] = {}
        said: dict[int, str] = {}
        refused: dict[str, str] = {}  # path (indices left out) -> the case where the server refused it
        for number, verdict in enumerate(self.unwalked):
            mutant = verdict.mutant

            def before(mutant: Mutant = mutant) -> str | None:
                if mutant.original not in unmutated:
                    unmutated[mutant.original] = server(mutant, mutant.original)
                return unmutated[mutant.original]

            answers = {kind: server(mutant, mutant.sql.replace(mutant.probe.sql, mutant.probe.text(kind)))
                       for kind in VARIANTS}
            ran = [kind for kind, answer in answers.items() if answer is None]
            said[number] = f"runs as {', '.join(ran)}" if ran else "; ".join(sorted({a for a in answers.values() if a}))
            if any(refuses_subquery(answer, before) for answer in answers.values()):
                refused.setdefault(mutant.slot, mutant.case.id)
        kept: list[Verdict] = []
        for number, verdict in enumerate(self.unwalked):
            where = refused.get(verdict.mutant.slot)
            note = said[number] if where in (None, verdict.mutant.case.id) else f"{said[number]} (refused at {where})"
            (kept if where is None else self.not_slots).append(replace(verdict, server=note))
            if where is not None:
                self.outcomes[(verdict.mutant.case.corpus, "unwalked")] -= 1
                self.outcomes[(verdict.mutant.case.corpus, "no site")] += 1
        self.unwalked = kept

    def merge(self, other: Report) -> None:
        self.tried.update(other.tried)
        self.outcomes.update(other.outcomes)
        self.unprobed += other.unprobed
        self.unwalked += other.unwalked
        self.masked += other.masked
        self.unknown += other.unknown
        self.not_slots += other.not_slots
        for name in Tally.__slots__:
            setattr(self.tally, name, getattr(self.tally, name) + getattr(other.tally, name))

    def summary(self) -> str:
        t = self.tally
        lines = [f"{self.total} mutants tried ("
                 + ", ".join(f"{name} {count}" for name, count in sorted(self.tried.items())) + ")",
                 f"  of {t.positions} slots: {t.refused} hold no expression, {t.unprintable} unprintable, "
                 f"{t.unparsable} do not parse again, {t.lost} lose the probe, {t.duplicates} repeat a text"]
        for name in sorted(self.tried):
            counts = ", ".join(f"{outcome} {self.outcomes[(name, outcome)]}" for outcome in OUTCOMES)
            lines.append(f"  {name}: {counts}")
        if self.unprobed:
            lines.append(f"  cases already reading every probe column (not mutated): {', '.join(self.unprobed)}")
        if self.not_slots:
            lines.append(f"  no site: unwalked, but PostgreSQL refuses a subquery there ({len(self.not_slots)})")
        lines.append(f"{len(self.unwalked)} unwalked sites "
                     f"({sum(v.action == 'allow' for v in self.unwalked)} of them allowed)")
        return "\n".join(lines)

    def details(self, limit: int | None = None) -> str:
        return _listing(self.unwalked, limit)

    def report(self) -> str:
        """Everything, for people: the summary and each list grouped by slot."""
        parts = [self.summary(),
                 "unwalked sites, by slot:", _grouped(self.unwalked),
                 "every unwalked site:", _listing(self.unwalked),
                 "masked (UNKNOWN only because the second parser fails or disagrees; the walker missed the probe):",
                 _grouped(self.masked),
                 "no sites (PostgreSQL refuses a subquery in that position):", _grouped(self.not_slots),
                 "unknown (the analysis gave up, so the policy reviews them):", _grouped(self.unknown)]
        return "\n\n".join(parts)


def _listing(verdicts: Sequence[Verdict], limit: int | None = None) -> str:
    lines = []
    for verdict in verdicts[:limit]:
        m = verdict.mutant
        server = f" server: {verdict.server}" if verdict.server else ""
        lines.append(f"{m.case.id} {m.path} [{verdict.action}]{server}\n    {' '.join(m.sql.split())}")
    if limit is not None and len(verdicts) > limit:
        lines.append(f"... and {len(verdicts) - limit} more")
    return "\n".join(lines)


def _grouped(verdicts: Sequence[Verdict]) -> str:
    groups: dict[str, list[Verdict]] = {}
    for verdict in verdicts:
        groups.setdefault(verdict.mutant.site, []).append(verdict)
    lines = []
    for site, members in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])):
        first = members[0]
        actions = dict(sorted(Counter(v.action for v in members).items()))
        notes = "".join(f"\n       {label}: {text}" for label, text in (("server", first.server), ("why", first.why))
                        if text)
        lines.append(f"{len(members):5}  {site}  {actions}\n       e.g. {first.mutant.case.id} {first.mutant.path}"
                     f"\n       {' '.join(first.mutant.sql.split())}{notes}")
    return "\n".join(lines) or "  (none)"


def explainer(schema: Schema, config: Config) -> Explainer:
    """SQL -> its analyses and the action, as `pgproxy check` gives them to the corpus agent
    (tests/test_enforce.py: explained_action)."""

    def explain_sql(sql: str) -> tuple[list[Analysis], str]:
        explanations = explain(sql, schema, config, agent="agent", groups=frozenset({"agents"}))
        return [e.analysis for e in explanations], strictest(e.decision for e in explanations).action.value

    return explain_sql


def run_case(case: corpus.Case, explain_sql: Explainer, candidates: Sequence[Probe]) -> Report:
    """Mutate one case with its probe and judge every mutant."""
    report = Report()
    baseline, _ = evidence(case.sql, explain_sql)
    probe = next((p for p in candidates if not reads(baseline, p)), None)
    if probe is None:
        report.unprobed.append(case.id)
        return report
    for mutant in mutate(case, probe, report.tally):
        verdict = judge(mutant, explain_sql)
        report.tried[case.corpus] += 1
        report.outcomes[(case.corpus, verdict.outcome)] += 1
        if verdict.outcome == "unwalked":
            report.unwalked.append(verdict)
        elif verdict.outcome == "masked":
            report.masked.append(verdict)
        elif verdict.outcome == "unknown":
            report.unknown.append(verdict)
    return report


def run(cases: Sequence[corpus.Case], schema: Schema, config: Config, *, workers: int | None = None) -> Report:
    """Every case mutated and judged, in `workers` processes (default: one per CPU, at most 4).

    Printing thousands of mutated trees is most of the time; pure work over picklable values,
    it is shared out to fresh (spawned) processes, which the proxy's threads cannot upset."""
    workers = workers or min(4, os.cpu_count() or 1)
    report = Report()
    if workers <= 1:
        _start(schema, config)
        for case in cases:
            report.merge(_run_one(case))
        return report
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
                             initargs=(schema, config)) as pool:
        for part in pool.map(_run_one, cases, chunksize=8):
            report.merge(part)
    return report


_worker: tuple[Explainer, list[Probe]] | None = None


def _start(schema: Schema, config: Config) -> None:
    global _worker
    _worker = (explainer(schema, config), probes(schema))


def _run_one(case: corpus.Case) -> Report:
    assert _worker is not None
    return run_case(case, *_worker)


# --- seeds ------------------------------------------------------------------------------------

SEEDS = Path(__file__).parent / "injection_seeds.sql"


def seeds() -> list[corpus.Case]:
    """The cases of injection_seeds.sql (corpus "seeds", numbered by their first line): blocks of
    lines between blank lines, the comment at the top left out."""
    cases: list[corpus.Case] = []
    block: list[str] = []
    lines = [*SEEDS.read_text().splitlines(), ""]
    for number, line in enumerate(lines, 1):
        if line.strip() and not (line.startswith("--") and not block):
            block.append(line)
        elif block:
            cases.append(corpus.Case("seeds", number - len(block), "allow", "grammar", "\n".join(block)))
            block = []
    return cases


def main() -> int:
    """Run tests/test_injection.py with its report printed (the schema needs the live fixtures)."""
    import pytest

    os.environ["PGPROXY_INJECTION_REPORT"] = "1"
    test = corpus.CORPORA.parent / "test_injection.py"
    return int(pytest.main(["-q", "-s", "-p", "no:cacheprovider", *sys.argv[1:],
                            f"{test}::test_every_expression_slot_is_walked"]))


if __name__ == "__main__":
    raise SystemExit(main())
