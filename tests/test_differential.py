"""Differential tests: the same protocol message sequences through the proxy and straight to PostgreSQL.

Each sequence (tests/sequences.py) runs on a fresh direct connection (``app_plain``, password
auth) and on a fresh connection through a proxy in enforce mode with approvals, while a test
reviewer approves or denies every held statement by a fixed rule (`approves`). Risky statements
carry a gate (``difftest_gate``) that fails, directly, exactly the executions the reviewer denies,
so both runs answer alike message for message. Then:

P0  the proxy answers every message as PostgreSQL does (a reviewer's denial standing for the gate's
    refusal): the run neither hangs, nor ends, nor answers out of turn or otherwise;
P1  no tagged value reaches the client, and no risky statement runs on the server, except by an
    execution the reviewer approved (each approval covers one execution: one portal or cursor,
    or one simple query);
P2  every benign row that PostgreSQL returns directly comes back through the proxy, and the
    proxy holds no statement that names only benign markers (no false hold);
P3  (once pgproxy.protocol exists) the proxy's model predicted what each execution ran.

Hypothesis generates the sequences as plain lists of steps (`sequences()`) rather than driving a
RuleBasedStateMachine: the properties are over whole runs (P2 needs the direct run's complete
answers), held statements make stepping two connections in lock-step awkward, and a sequence that
is plain data shrinks well and is saved as a regression case (tests/regressions/*.json).

PGPROXY_DIFF_EXAMPLES sets the number of sequences per test (default 500; the piecemeal test
runs half as many); PGPROXY_DIFF_PROPERTIES the properties asserted (default "P0,P1,P2,P3").
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.machinery
import itertools
import json
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import strategies as st

import pgproxy
from pgproxy.config import Config, load_config
from pgproxy.pgcluster import PostgresCluster
from tests import corpus
from tests.approvals_support import api, approvals_config, decide, reviewer_token
from tests.harness import (
    DATABASE,
    UPSTREAM_USERS,
    ProxyThread,
    RawClient,
    piecemeal_upstream,
    running_proxy,
    write_enforce_config,
)
from tests.sequences import (
    BENIGN,
    FAILING,
    GATE_FUNCTION_SQL,
    RISKY,
    STATEMENTS,
    Bind,
    Close,
    Describe,
    Execute,
    Flush,
    Outcome,
    Parse,
    Query,
    Run,
    Step,
    Sync,
    Wait,
    Write,
    expand,
    from_json,
    gate_allows,
    markers_in,
    row_marker,
    run_sequence,
    show,
    sql_of,
    to_json,
)

EXAMPLES = int(os.environ.get("PGPROXY_DIFF_EXAMPLES", "500"))
# The properties asserted (to hunt for one kind of failure while another is known, e.g. "P1").
PROPERTIES = tuple(os.environ.get("PGPROXY_DIFF_PROPERTIES", "P0,P1,P2,P3").replace(" ", "").split(","))
REGRESSIONS = Path(__file__).parent / "regressions"
SEQUENCE_SECONDS = 15.0  # a run that takes longer has hung
APPROVAL_TIMEOUT = 10.0  # held statements the reviewer missed expire (a failure of the run, not a hang)
DIRECT_PASSWORD = UPSTREAM_USERS["app_plain"][0]


# --- the reviewer ------------------------------------------------------------------------------


def approves(statement: str) -> bool:
    """The test reviewer's rule: deny an execution that names a risky marker difftest_gate
    refuses (the SELECT of an Execute or a query, and EXECUTE or FETCH, whose request shows the
    statement they run); approve everything else. Denials then fall exactly where the direct
    run's gate fails. A DECLARE … WITH HOLD is held because its query runs when the transaction
    commits: it is approved, and the gate fails at the COMMIT in both runs alike."""
    if statement.lstrip()[:7].upper() == "DECLARE":
        return True
    return not any(k[0] == "r" and not gate_allows(k) for k in markers_in(statement))


@dataclass(frozen=True, slots=True)
class Review:
    statement: str
    application_name: str
    approved: bool
    status: int = 0  # the decision request's HTTP status (0: not sent yet)


class Reviewer:
    """A thread that decides every pending approval (while `active`) by `approves`, and records it."""

    def __init__(self, proxy: ProxyThread, interval: float = 0.004) -> None:
        self.proxy = proxy
        self.interval = interval
        self.active = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self.reviews: list[Review] = []
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._loop, daemon=True, name="difftest-reviewer")

    def __enter__(self) -> Reviewer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.active.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.active.wait(0.1):
                continue
            try:
                self._poll()
            except Exception as exc:  # keep reviewing; the run that needed it reports the error
                self.errors.append(repr(exc))
            time.sleep(self.interval)

    def _poll(self) -> None:
        status, body = api(self.proxy, "GET", "/api/approvals?status=pending", token=reviewer_token())
        if status != 200:
            self.errors.append(f"listing approvals: HTTP {status} {body}")
            return
        for request in body["approvals"]:
            if request["id"] in self._seen:
                continue
            self._seen.add(request["id"])
            approved = approves(request["statement"])
            # Recorded before the decision is sent: the held session may finish its run as soon as it is.
            with self._lock:
                self.reviews.append(Review(request["statement"], request["application_name"], approved))
                index = len(self.reviews) - 1
            status, _ = decide(self.proxy, request, "approve" if approved else "deny",
                               reason=f"difftest rule: {'approve' if approved else 'deny'}")
            with self._lock:
                self.reviews[index] = dataclasses.replace(self.reviews[index], status=status)

    def reviews_for(self, application_name: str) -> list[Review]:
        with self._lock:
            return [r for r in self.reviews if r.application_name == application_name]


# --- judging a pair of runs ---------------------------------------------------------------------


_CURSOR_REF = re.compile(r"^(?:FETCH|MOVE)\b.*\b(?:FROM|IN)\s+(\w+)\s*$", re.IGNORECASE | re.DOTALL)
_DECLARE = re.compile(r"^DECLARE\s+(\w+)", re.IGNORECASE)


def _first_word(text: str) -> str:
    return text.lstrip().split(" ", 1)[0].upper()


@dataclass(slots=True)
class _Execution:
    """One execution that produced risky rows or ran a risky gate: what coverage it needs."""

    key: tuple[str, int]  # ("portal", instance) or ("query", step)
    marker: str
    outcome: Outcome
    declared_by: str | None  # the DECLARE text that created the cursor instance, if any


def risky_executions(run: Run) -> list[_Execution]:
    """Executions of risky statements in `run`: results with a risky marker (or a tagged value)
    and errors raised by difftest_gate, each keyed by the portal or cursor instance it used (one
    approval covers every Execute/FETCH of one instance) or, for other queries, by its step."""
    instances: dict[str, tuple[int, str | None]] = {}  # portal/cursor name -> (instance, DECLARE text)
    serial = itertools.count()
    found: list[_Execution] = []
    seen: set[tuple[tuple[str, int], str]] = set()
    for outcome in run.outcomes:
        message = outcome.message
        key: tuple[str, int] | None = None
        declared_by = None
        if isinstance(message, Bind) and outcome.answer == "ok":
            instances[message.portal] = (next(serial), None)
        elif isinstance(message, Execute):
            number, declared_by = instances.get(message.portal, (-1, None))
            key = ("portal", number)
        elif isinstance(message, Query):
            text = expand(message.text)
            declare = _DECLARE.match(text)
            cursor = _CURSOR_REF.match(text)
            if declare and outcome.answer == "rows":
                instances[declare.group(1)] = (next(serial), text)
            gate = outcome.gate_refusal()
            if cursor:
                number, declared_by = instances.get(cursor.group(1), (-1, None))
                key = ("portal", number)
            elif gate and _first_word(text) in ("COMMIT", "END"):
                # A WITH HOLD cursor's query runs to completion when its transaction commits.
                number, declared_by = next(
                    (found for found in instances.values() if found[1] and f"'{gate}'" in found[1]
                     and "WITH HOLD" in found[1]), (-1, None))
                key = ("portal", number)
            else:
                key = ("query", outcome.step)
        if key is None:
            continue
        markers = {row_marker(row) or "?" for row in outcome.rows}
        gate = outcome.gate_refusal()
        if gate:
            markers.add(gate)
        for marker in sorted(markers):
            if marker[0] == "r" and (key, marker) not in seen:
                seen.add((key, marker))
                found.append(_Execution(key, marker, outcome, declared_by))
    return found


def unapproved_executions(run: Run, reviews: list[Review]) -> list[str]:
    """P1's core: match each risky execution with an approval that covers it, each approval used once.

    An approval covers an execution when its text is the statement that ran (the SELECT, for an
    Execute or a plain query), the step's own text (EXECUTE name, FETCH …: what the reviewer was
    shown), or the DECLARE that created the cursor instance fetched. Approving a PREPARE runs
    nothing, so it covers nothing."""
    unused = [r.statement for r in reviews if r.approved]
    problems: list[str] = []
    for execution in risky_executions(run):
        step = execution.outcome.message
        # The most specific first: the DECLARE of the cursor fetched, the query's own text, then
        # any approval whose request showed the statement that ran (its marker).
        candidates = [text for text in unused if execution.marker in markers_in(text)
                      and text.lstrip()[:7].upper() != "PREPARE"]
        preferred = [execution.declared_by, expand(step.text) if isinstance(step, Query) else None]
        candidates.sort(key=lambda text: 0 if text in preferred else 1)
        if candidates:
            unused.remove(candidates[0])
        else:
            what = ("ran difftest_gate (the server executed it)" if execution.outcome.gate_refusal()
                    else f"returned {len(execution.outcome.rows)} rows of tagged columns")
            problems.append(f"P1: step {execution.outcome.step} {step!r} {what} for {execution.marker} "
                            "with no approval covering that execution")
    return problems


def tagged_leaks(run: Run, tagged: frozenset[str]) -> list[str]:
    """Rows holding a tagged value whose marker is not a risky statement's (so no approval can cover them)."""
    problems = []
    for outcome in run.outcomes:
        for row in outcome.rows:
            marker = row_marker(row) or "?"
            if marker[0] != "r" and any(value in tagged for value in row[1:] if value is not None):
                problems.append(f"P1: step {outcome.step} {outcome.message!r}: a tagged value in a row "
                                f"marked {marker!r}")
    return problems


def false_holds(direct: Run, reviews: list[Review]) -> list[str]:
    """Held statements that name only benign markers and that PostgreSQL runs without an error
    (one it rejects, e.g. a syntax error, may be held: the proxy fails closed on what it cannot read)."""
    ran = {sql_of(o.message) for o in direct.outcomes
           if isinstance(o.message, (Parse, Query)) and o.answer in ("ok", "rows")}
    return [f"P2: false hold of {r.statement!r}" for r in reviews
            if r.statement in ran and all(k[0] == "b" for k in markers_in(r.statement) or ["?"])]


def benign_rows(run: Run) -> Counter[tuple[str | None, ...]]:
    return Counter(row for o in run.outcomes for row in o.rows if (row_marker(row) or "?")[0] == "b")


def normalized(outcome: Outcome) -> tuple[Any, ...]:
    """An outcome as compared across runs: a reviewer's denial (through the proxy) and the gate's
    refusal (directly) are the same answer."""
    if outcome.answer == "error":
        assert outcome.error is not None
        denied = outcome.gate_refusal() is not None or outcome.error.get("M", "").startswith("denied by reviewer")
        return (outcome.answer, len(outcome.rows), "denied" if denied else outcome.sqlstate)
    return (outcome.answer, tuple(outcome.rows), outcome.tag)


def first_divergence(direct: Run, proxied: Run) -> str | None:
    for mine, theirs in zip(direct.outcomes, proxied.outcomes, strict=False):
        if normalized(mine) != normalized(theirs):
            return (f"step {mine.step} {mine.message!r}: directly {mine.brief()!r}, "
                    f"through the proxy {theirs.brief()!r}")
    if len(direct.outcomes) != len(proxied.outcomes):
        return f"{len(direct.outcomes)} outcomes directly, {len(proxied.outcomes)} through the proxy"
    return None


def observed_runs(run: Run) -> list[tuple[Outcome, str | None]]:
    """The executions the server ran in `run` (Execute, and the EXECUTE/FETCH a simple query names),
    each with the marker of what it ran when its answer shows it."""
    found: list[tuple[Outcome, str | None]] = []
    for outcome in run.outcomes:
        message = outcome.message
        if outcome.answer not in ("rows", "error") or outcome.sqlstate in ("34000", "26000"):
            continue  # not run: no such portal / prepared statement
        if outcome.error is not None and outcome.error.get("M", "").startswith("denied by reviewer"):
            continue
        if isinstance(message, Query) and _first_word(expand(message.text)) not in ("EXECUTE", "FETCH"):
            continue
        if not isinstance(message, (Execute, Query)):
            continue
        marker = outcome.gate_refusal() or next((row_marker(r) for r in outcome.rows if row_marker(r)), None)
        found.append((outcome, marker))
    return found


def prediction_problems(run: Run, predicted: list[str]) -> list[str]:
    """P3: every execution whose answer shows what it ran was predicted so, in order. (How many
    executions the model records, e.g. for Executes the server skipped after an error, is the
    model's business: only a prediction contradicted by the server fails.)"""
    problems: list[str] = []
    position = 0
    for outcome, marker in observed_runs(run):
        if marker is None:
            continue
        while position < len(predicted) and marker not in markers_in(predicted[position]):
            position += 1
        if position == len(predicted):
            problems.append(f"P3: step {outcome.step} {outcome.message!r} ran {marker}, which the model did not "
                            f"predict there (predicted runs: {predicted})")
            break
        position += 1
    return problems


@dataclass(slots=True)
class Comparison:
    steps: list[Step]
    direct: Run
    proxied: Run
    reviews: list[Review]
    predicted: list[str] | None
    problems: list[str] = field(default_factory=list)

    def report(self) -> str:
        reviews = "\n".join(f"  {'approved' if r.approved else 'denied'} ({r.status}): {r.statement}"
                            for r in self.reviews) or "  (none)"
        divergence = first_divergence(self.direct, self.proxied)
        return "\n".join([
            *self.problems, "", f"sequence: {show(self.steps)}",
            f"first divergence: {divergence or 'none'}",
            f"direct ({self.direct.seconds:.2f} s):", self.direct.transcript(),
            f"through the proxy ({self.proxied.seconds:.2f} s, {self.proxied.notices} notices):",
            self.proxied.transcript(), "reviews:", reviews,
            f"predicted runs: {self.predicted}" if self.predicted is not None else "",
        ])


# --- the rig: a proxy, its reviewer, and the direct server ---------------------------------------


def protocol_model() -> Any | None:
    """pgproxy.protocol.ProtocolModel, once the proxy has it (P3 needs its trace hook). Looked for
    only beside the pgproxy imported: an editable install's finder would otherwise supply a
    module this checkout does not have from another one."""
    if importlib.machinery.PathFinder.find_spec("pgproxy.protocol", list(pgproxy.__path__)) is None:
        return None
    return getattr(importlib.import_module("pgproxy.protocol"), "ProtocolModel", None)


class ServerCrashed(Exception):
    """PostgreSQL crashed running a sequence directly: the example is discarded, not judged."""


class DiffRig:
    """Runs sequences directly and through `proxy`, and judges each pair of runs."""

    def __init__(self, pg: PostgresCluster, proxy: ProxyThread, reviewer: Reviewer, tagged: frozenset[str],
                 *, piecemeal: bool = False) -> None:
        self.pg = pg
        self.proxy = proxy
        self.reviewer = reviewer
        self.tagged = tagged
        self.piecemeal = piecemeal
        self.tracing = protocol_model() is not None and bool(getattr(protocol_model(), "trace", False))
        self._runs = itertools.count(1)

    def compare(self, steps: list[Step], *, seed: int = 0) -> Comparison:
        def cuts() -> random.Random | None:
            return random.Random(seed) if self.piecemeal else None

        direct_client = RawClient(self.pg.port, timeout=SEQUENCE_SECONDS)
        try:
            direct_client.login(user="app_plain", token=DIRECT_PASSWORD, database=DATABASE)
            direct = run_sequence(direct_client, steps, seconds=SEQUENCE_SECONDS, cuts=cuts())
        finally:
            direct_client.close()
        if direct.ended and self._recovering():
            raise ServerCrashed(f"PostgreSQL itself crashed running {show(steps)}")
        name = f"difftest-{os.getpid()}-{next(self._runs)}"
        client = RawClient(self.proxy.port, timeout=SEQUENCE_SECONDS)
        self.reviewer.active.set()
        try:
            client.login(application_name=name)
            proxied = run_sequence(client, steps, seconds=SEQUENCE_SECONDS, cuts=cuts())
            predicted = self._predicted(name) if self.tracing else None
        finally:
            self.reviewer.active.clear()
            client.close()
        comparison = Comparison(steps, direct, proxied, self.reviewer.reviews_for(name), predicted)
        comparison.problems = self.judge(comparison)
        return comparison

    def _recovering(self) -> bool:
        """Whether the server crashed (it restarts, refusing logins meanwhile); waits until it is back.

        PostgreSQL 15 has been seen to crash (a segfault in a backend, then crash recovery) on
        BEGIN, an error, DECLARE of a cursor (refused in the aborted block), then Execute of the
        unnamed portal -- directly, without pgproxy. Such a sequence says nothing about pgproxy."""
        crashed = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            probe = RawClient(self.pg.port, timeout=SEQUENCE_SECONDS)
            try:
                probe.login(user="app_plain", token=DIRECT_PASSWORD, database=DATABASE)
                return crashed
            except (AssertionError, OSError):
                crashed = True
                time.sleep(0.5)
            finally:
                probe.close()
        raise AssertionError("PostgreSQL did not come back after a crash")

    def _predicted(self, application_name: str) -> list[str] | None:
        async def collect() -> list[list[str]]:
            sessions: list[Any] = list(self.proxy.server.sessions)  # Session.model: the new protocol model
            return [list(s.model.predicted_runs) for s in sessions
                    if s.parameters.get("application_name") == application_name]

        found: list[list[str]] = self.proxy.call(collect())
        return found[0] if found else None

    def judge(self, c: Comparison) -> list[str]:
        problems: list[str] = []
        if c.direct.ended:
            problems.append(f"harness: the direct run ended early ({c.direct.ended})")
        if c.proxied.ended and not c.direct.ended:
            problems.append(f"P0: the run through the proxy ended early ({c.proxied.ended})")
        elif (divergence := first_divergence(c.direct, c.proxied)) is not None:
            problems.append(f"P0: the proxy answered otherwise than PostgreSQL: {divergence}")
        problems += tagged_leaks(c.proxied, self.tagged)
        problems += unapproved_executions(c.proxied, c.reviews)
        missing = benign_rows(c.direct) - benign_rows(c.proxied)
        extra = benign_rows(c.proxied) - benign_rows(c.direct)
        if missing:
            problems.append(f"P2: benign rows PostgreSQL returned that the proxy did not: {sorted(missing)}")
        if extra:
            problems.append(f"P2: benign rows the proxy returned that PostgreSQL did not: {sorted(extra)}")
        problems += false_holds(c.direct, c.reviews)
        if self.reviewer.errors:
            problems.append(f"harness: the reviewer failed: {self.reviewer.errors[-3:]}")
            self.reviewer.errors.clear()
        if self.tracing and not c.proxied.ended:
            if c.predicted is None:
                problems.append("P3: the session's model recorded no predicted runs")
            else:
                problems += prediction_problems(c.proxied, c.predicted)
        return problems

    def check(self, steps: list[Step], *, seed: int = 0, save_as: str | None = None) -> Comparison:
        """Compare, and fail with the full report (saving the sequence as `save_as` when given)."""
        comparison = self.compare(steps, seed=seed)
        comparison.problems = [p for p in comparison.problems if not p.startswith("P") or p[:2] in PROPERTIES]
        if not comparison.problems:
            return comparison
        first = comparison.problems[0]
        if save_as is not None:
            save_regression(f"{save_as}-{first.split(':', 1)[0].lower()}", steps, comparison.problems)
        # One exception type per property, each raised from its own line: hypothesis tells
        # failures apart by both, so it shrinks a leak and, say, a hang as separate bugs.
        if first.startswith("P0"):
            raise ProtocolBroken(comparison.report())
        if first.startswith("P1"):
            raise Leak(comparison.report())
        if first.startswith("P2"):
            raise LostBenign(comparison.report())
        if first.startswith("P3"):
            raise Misprediction(comparison.report())
        raise HarnessError(comparison.report())


class ProtocolBroken(AssertionError):
    """P0: the run through the proxy hung, ended, or was answered otherwise than PostgreSQL answers."""


class Leak(AssertionError):
    """P1: a tagged value reached the client, or a risky statement ran, unapproved."""


class LostBenign(AssertionError):
    """P2: a benign result did not come back through the proxy, or a benign statement was held."""


class Misprediction(AssertionError):
    """P3: the proxy's model predicted an execution other than the one the server ran."""


class HarnessError(AssertionError):
    """The direct run itself went wrong, or the reviewer failed: the harness needs fixing."""


def save_regression(name: str, steps: list[Step], problems: list[str]) -> Path:
    """Keep a failing sequence as tests/regressions/<name>.json (a later, shorter one overwrites it:
    hypothesis runs the shrunk example last)."""
    REGRESSIONS.mkdir(exist_ok=True)
    path = REGRESSIONS / f"{name}.json"
    path.write_text(regression_json(steps, problems[:3]))
    return path


def regression_json(steps: list[Step], problems: list[str], note: str = "") -> str:
    """A regression case's file: what failed, and the steps one to a line."""
    lines = ",\n  ".join(json.dumps(step) for step in to_json(steps))
    head = json.dumps({"note": note, "problems": problems}, indent=1)[:-2]
    return f"{head},\n \"steps\": [\n  {lines}\n ]\n}}\n"


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def difftest_db(pg: PostgresCluster) -> frozenset[str]:
    """The gate function in the test database; the tagged values of customers (read directly)."""
    pg.psql(GATE_FUNCTION_SQL, dbname=DATABASE)
    values = pg.psql("SELECT concat_ws(E'\\n', name, email, phone, ssn) FROM customers", dbname=DATABASE)
    return frozenset(v for v in values.splitlines() if v)


@pytest.fixture(scope="module")
def traced() -> Iterator[bool]:
    """Turn on the protocol model's trace (P3) for the sessions of this module, when it exists."""
    model = protocol_model()
    if model is None:
        yield False
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model, "trace", True)
        yield True


def difftest_config(pg: PostgresCluster, directory: Path) -> Config:
    """Enforce mode, the demo policy, the corpus catalog, approvals; difftest_gate allow-listed,
    so that only the tagged columns make a risky statement need review. Run-time sampling takes the
    first rows of nearly every result: with it on, clients must still get what the server sends."""
    extra = approvals_config(directory, APPROVAL_TIMEOUT) + "analysis:\n  allowed_functions: [difftest_gate]\n" \
        "sampling: {enabled: true, results_per_second: 10000, rows_per_result: 2}\n"
    return load_config(write_enforce_config(pg, directory, catalog=corpus.CATALOG, extra=extra))


@pytest.fixture(scope="module")
def rig(pg: PostgresCluster, difftest_db: frozenset[str], traced: bool,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[DiffRig]:
    config = difftest_config(pg, tmp_path_factory.mktemp("difftest"))
    with running_proxy(config) as proxy, Reviewer(proxy) as reviewer:
        yield DiffRig(pg, proxy, reviewer, difftest_db)


@pytest.fixture(scope="module")
def piecemeal_rig(pg: PostgresCluster, difftest_db: frozenset[str], traced: bool,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[DiffRig]:
    """The proxy's upstream behind tests.harness.piecemeal_upstream (the server's bytes cut at random
    read boundaries); the client writes its batches in random cuts too."""
    config = difftest_config(pg, tmp_path_factory.mktemp("difftest-piecemeal"))
    with ExitStack() as stack:
        port = stack.enter_context(piecemeal_upstream(pg, seed=11))
        routes = {name: dataclasses.replace(route, port=port) for name, route in config.routes.items()}
        proxy = stack.enter_context(running_proxy(dataclasses.replace(config, routes=routes)))
        reviewer = stack.enter_context(Reviewer(proxy))
        yield DiffRig(pg, proxy, reviewer, difftest_db, piecemeal=True)


# --- sequences ----------------------------------------------------------------------------------

STATEMENT_NAMES = ("", "s1", "s2")  # protocol statements; s1/s2 are also SQL PREPARE names
PORTAL_NAMES = ("", "p1", "p2")  # protocol portals
CURSOR_NAMES = ("p1", "c1")  # SQL cursors: p1 is a protocol portal's name too
PREPARE_NAMES = ("s1", "s2")


_NAMESPACES = {"statement": STATEMENT_NAMES, "portal": PORTAL_NAMES, "cursor": CURSOR_NAMES,
               "prepared": PREPARE_NAMES}


def _focus(namespace: str) -> st.SearchStrategy[str]:
    return st.shared(st.sampled_from(_NAMESPACES[namespace]), key=f"focus-{namespace}")


def _focused(namespace: str) -> st.SearchStrategy[str]:
    """A name of `namespace`, half the time the one this sequence focuses on: reuse of one name
    is where statements and portals replace and outlive each other. (The focus is drawn before
    the steps, so that shrinking a step away does not change it.)"""
    return st.one_of(_focus(namespace), st.sampled_from(_NAMESPACES[namespace]))


def sequences(max_groups: int = 10) -> st.SearchStrategy[list[Step]]:
    """Random sequences: single messages and the idioms drivers send (Parse-Bind-Execute…), simple
    queries of every session-state kind, with write boundaries and waits in between."""
    sql = st.sampled_from(BENIGN + RISKY + RISKY + FAILING)
    statement = _focused("statement")
    portal = _focused("portal")
    cursor = _focused("cursor")
    prepared = _focused("prepared")
    rows = st.sampled_from((0, 0, 1, 2))
    count = st.sampled_from(("1", "2", "ALL", "NEXT"))
    parse = st.builds(Parse, statement, sql)
    bind = st.builds(Bind, portal, statement)
    execute = st.builds(Execute, portal, rows)
    query = st.one_of(
        st.sampled_from(("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT sp", "ROLLBACK TO sp", "RELEASE sp",
                         "DISCARD ALL", "DEALLOCATE ALL", "CLOSE ALL")).map(Query),
        st.builds(lambda name, key: Query(f"PREPARE {name} AS {{{key}}}"), prepared, sql),
        st.builds(lambda name: Query(f"EXECUTE {name}"), prepared),
        st.builds(lambda name: Query(f"DEALLOCATE {name}"), prepared),
        st.builds(lambda name, hold, key: Query(f"DECLARE {name} CURSOR {hold}FOR {{{key}}}"),
                  cursor, st.sampled_from(("", "WITH HOLD ")), sql),
        st.builds(lambda n, name: Query(f"FETCH {n} FROM {name}"), count, st.sampled_from((*CURSOR_NAMES, "p2"))),
        st.builds(lambda n, name: Query(f"MOVE {n} IN {name}"), count, cursor),
        st.builds(lambda name: Query(f"CLOSE {name}"), cursor),
        st.builds(lambda key: Query(f"{{{key}}}"), sql),
    )
    single = st.one_of(
        parse, bind, execute, query,
        st.builds(Describe, st.just("S"), statement), st.builds(Describe, st.just("P"), portal),
        st.builds(Close, st.just("S"), statement), st.builds(Close, st.just("P"), portal),
        st.just(Flush()), st.just(Sync()), st.just(Write()), st.just(Wait()),
    ).map(lambda step: [step])
    # A driver's Parse-Bind-Execute of one statement and portal, each part there or not: the
    # shrinker drops parts by turning a flag off.
    chain = st.tuples(statement, portal, sql, rows, st.booleans(), st.booleans(), st.booleans()).map(
        lambda t: [step for step, there in ((Parse(t[0], t[2]), t[4]), (Bind(t[1], t[0]), t[5]),
                                            (Execute(t[1], t[3]), t[6])) if there])
    idioms = st.one_of(chain, st.sampled_from(([Sync(), Wait()], [Sync(), Write()])))
    groups = st.lists(st.one_of(single, idioms), min_size=1, max_size=max_groups)
    focus = st.tuples(*(_focus(namespace) for namespace in _NAMESPACES))
    return st.tuples(focus, groups).map(lambda drawn: [step for group in drawn[1] for step in group])


def _settings(examples: int) -> Callable[[Any], Any]:
    return settings(max_examples=max(1, examples), deadline=None, derandomize=bool(os.environ.get("CI")),
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# pytest-timeout's 120 s is for one test; these run hundreds of sequences (thousands on demand).
_LONG = pytest.mark.timeout(300 + EXAMPLES)


@_LONG
@_settings(EXAMPLES)
@given(steps=sequences())
def test_proxy_agrees_with_postgres(rig: DiffRig, steps: list[Step]) -> None:
    try:
        rig.check(steps, save_as="found-differential")
    except ServerCrashed:
        reject()  # see DiffRig._recovering


@_LONG
@_settings(EXAMPLES // 2)
@given(steps=sequences(), seed=st.integers(0, 2**16))
def test_proxy_agrees_with_postgres_cut_anywhere(piecemeal_rig: DiffRig, steps: list[Step], seed: int) -> None:
    try:
        piecemeal_rig.check(steps, seed=seed, save_as="found-piecemeal")
    except ServerCrashed:
        reject()  # see DiffRig._recovering


# --- regression cases ---------------------------------------------------------------------------

# Written by hand from the issue: each one leaked a tagged value (or ran a risky statement
# unapproved) through the proxy whose model did not follow the server.
CASES: dict[str, list[Step]] = {
    # In one write: the portal is bound to the risky statement; the unnamed statement is then
    # replaced by a benign one, but the portal keeps running what it was bound to.
    "unnamed-statement-replaced-after-bind": [Parse("", "r2"), Bind("", ""), Parse("", "b1"), Execute(""), Sync()],
    # Closing a statement does not close the portal bound to it.
    "statement-closed-portal-open": [Parse("s1", "r2"), Bind("p1", "s1"), Close("S", "s1"), Execute("p1"), Sync()],
    # A duplicate Parse of a named statement fails (42P05) and changes nothing.
    "duplicate-parse-fails": [Parse("s1", "r2"), Sync(), Wait(), Parse("s1", "b1"), Sync(), Wait(),
                              Bind("p1", "s1"), Execute("p1"), Sync()],
    # SQL FETCH reaches a protocol portal (one namespace for portals and cursors).
    "sql-fetch-of-protocol-portal": [Query("BEGIN"), Parse("s1", "r2"), Bind("p1", "s1"), Sync(), Wait(),
                                     Query("FETCH ALL FROM p1"), Query("COMMIT")],
    # SQL PREPARE of a name a protocol statement holds fails (42P05); EXECUTE runs the protocol one.
    "sql-prepare-collides-with-protocol-statement": [Parse("s1", "r2"), Sync(), Wait(),
                                                     Query("PREPARE s1 AS {b1}"), Query("EXECUTE s1")],
    # The other way round: a protocol Bind of a statement PREPAREd in SQL runs it (approving the
    # PREPARE ran nothing).
    "protocol-bind-of-sql-prepared-statement": [Query("PREPARE s1 AS {r2}"), Bind("p1", "s1"), Execute("p1"),
                                                Sync()],
    # The same with the gate refusing: the server must not run it at all (the reviewer denies
    # the SELECT; the PREPARE itself was approved).
    "protocol-bind-of-sql-prepared-denied-statement": [Query("PREPARE s1 AS {r3}"), Bind("p1", "s1"),
                                                       Execute("p1"), Sync()],
}


# Sequences the proxy already gets right: held and approved or denied where the gate agrees,
# a failing pipeline, row limits, a cursor. They keep the harness honest (it must pass them).
CONTROLS: dict[str, list[Step]] = {
    "extended-approved": [Parse("", "r2"), Bind("", ""), Execute(""), Sync()],
    "extended-denied-then-benign": [Parse("", "r3"), Bind("", ""), Execute(""), Sync(),
                                    Parse("", "b2"), Bind("", ""), Execute("", 2), Execute(""), Sync()],
    "simple-approved-and-denied": [Query("{r4}"), Query("{r5}"), Query("{b1}")],
    "denied-in-transaction": [Query("BEGIN"), Query("{b1}"), Query("{r1}"), Query("{b2}"), Query("ROLLBACK"),
                              Query("{b3}")],
    "failing-pipeline": [Parse("s1", "f2"), Bind("p1", "s1"), Execute("p1", 1), Execute("p1", 1),
                         Parse("", "b1"), Bind("", ""), Execute(""), Query("{b2}"), Sync(), Wait(), Query("{b3}")],
    "failing-at-bind": [Parse("", "f1"), Bind("", ""), Execute(""), Sync(), Parse("", "f3"), Sync(),
                        Parse("", "f4"), Sync(), Query("{f1}"), Query("{b4}")],
    "cursor-approved-at-declare": [Query("BEGIN"), Query("DECLARE c1 CURSOR FOR {r4}"), Query("FETCH 1 FROM c1"),
                                   Query("FETCH ALL FROM c1"), Query("COMMIT")],
    "prepared-approved": [Query("PREPARE s2 AS {r6}"), Query("EXECUTE s2"), Query("EXECUTE s2"),
                          Query("DEALLOCATE s2")],
    "pipelined-holds": [Parse("s1", "r8"), Bind("p1", "s1"), Execute("p1", 1), Flush(), Write(),
                        Parse("s2", "r7"), Bind("p2", "s2"), Execute("p2"), Sync(), Parse("", "b3"), Bind("", ""),
                        Execute("", 3), Sync()],
}


@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_control_case(rig: DiffRig, name: str) -> None:
    rig.check(CONTROLS[name])


@pytest.mark.parametrize("name", sorted(CASES))
def test_regression_case(rig: DiffRig, name: str) -> None:
    rig.check(CASES[name])


def _saved() -> list[Path]:
    return sorted(REGRESSIONS.glob("*.json")) if REGRESSIONS.is_dir() else []


@pytest.mark.parametrize("path", _saved(), ids=[p.stem for p in _saved()])
def test_saved_regression(rig: DiffRig, path: Path) -> None:
    """Shrunk sequences hypothesis found (tests/regressions/*.json), replayed."""
    rig.check(from_json(json.loads(path.read_text())["steps"]))


def test_model_trace_hook(rig: DiffRig) -> None:
    """P3's hook: the proxy's protocol model records what it predicts each execution runs."""
    if protocol_model() is None:
        pytest.skip("pgproxy.protocol.ProtocolModel does not exist yet: P3 (the model's predictions) is not checked")
    comparison = rig.check([Parse("s1", "b2"), Bind("p1", "s1"), Execute("p1", 1), Execute("p1"), Sync(),
                            Query("BEGIN"), Query("DECLARE c1 CURSOR FOR {b3}"), Query("FETCH 2 FROM c1"),
                            Query("COMMIT")])
    assert comparison.predicted is not None and len(comparison.predicted) >= 3, comparison.report()


# --- the judges, on runs made up here (no server) -----------------------------------------------


def _run(*outcomes: tuple[Step, str, list[tuple[str | None, ...]], dict[str, str] | None]) -> Run:
    run = Run()
    for step, (message, answer, rows, error) in enumerate(outcomes):
        assert not isinstance(message, (Write, Wait))
        run.outcomes.append(Outcome(step, message, answer, list(rows), "", error))
    return run


def _gate(marker: str) -> dict[str, str]:
    return {"S": "ERROR", "C": "P0001", "M": f"difftest_gate refused {marker}"}


def test_each_approval_covers_one_execution() -> None:
    """Two portals running the same risky statement need two approvals; Executes of one
    portal (a row limit, then the rest) need one; a PREPARE's approval covers nothing."""
    select = STATEMENTS["r2"]
    run = _run((Bind("p1", "s1"), "ok", [], None), (Execute("p1", 1), "rows", [("r2", "x")], None),
               (Execute("p1"), "rows", [("r2", "y")], None),
               (Bind("p2", "s1"), "ok", [], None), (Execute("p2"), "rows", [("r2", "x")], None))
    assert len(unapproved_executions(run, [Review(select, "", True)])) == 1
    assert unapproved_executions(run, [Review(select, "", True)] * 2) == []
    assert len(unapproved_executions(run, [Review(f"PREPARE s1 AS {select}", "", True)] * 2)) == 2
    assert len(unapproved_executions(run, [Review(select, "", False)] * 2)) == 2
    # EXECUTE s1 (held as such) first, then a portal of the same statement (held as the SELECT).
    run = _run((Query("EXECUTE s1"), "rows", [("r2", "x")], None), (Bind("", ""), "ok", [], None),
               (Execute(""), "rows", [("r2", "x")], None))
    shown = f"EXECUTE s1\n-- s1 is: {select}"  # the request for EXECUTE shows what s1 stands for
    assert unapproved_executions(run, [Review(shown, "", True), Review(select, "", True)]) == []
    assert len(unapproved_executions(run, [Review("EXECUTE s1", "", True), Review(select, "", True)])) == 1


def test_cursor_executions_are_covered_by_their_declare() -> None:
    """A cursor's FETCHes are one execution, covered by approving its DECLARE (or the FETCH);
    a WITH HOLD cursor whose query fails when its transaction commits ran at the COMMIT."""
    declare = expand("DECLARE c1 CURSOR WITH HOLD FOR {r3}")
    run = _run((Query("BEGIN"), "rows", [], None), (Query("DECLARE c1 CURSOR WITH HOLD FOR {r3}"), "rows", [], None),
               (Query("COMMIT"), "error", [], _gate("r3")))
    assert unapproved_executions(run, [Review(declare, "", True)]) == []
    assert len(unapproved_executions(run, [])) == 1
    run = _run((Query("DECLARE c1 CURSOR WITH HOLD FOR {r4}"), "rows", [], None),
               (Query("FETCH 1 FROM c1"), "rows", [("r4", "a", "b")], None),
               (Query("FETCH ALL FROM c1"), "rows", [("r4", "c", "d")], None))
    assert unapproved_executions(run, [Review(expand("DECLARE c1 CURSOR WITH HOLD FOR {r4}"), "", True)]) == []
    fetch = f"FETCH 1 FROM c1\n-- c1 is: {STATEMENTS['r4']}"  # a FETCH's request shows the cursor's query
    assert unapproved_executions(run, [Review(fetch, "", True)]) == []
    assert len(unapproved_executions(run, [Review("FETCH 1 FROM c1", "", True)])) == 1


def test_predictions_must_match_what_ran() -> None:
    """P3 fails on an execution the model predicted as another statement, and not on
    predictions of Executes the server skipped."""
    run = _run((Execute(""), "rows", [("b1",)], None), (Execute("p1"), "error", [], _gate("r3")),
               (Execute("p2"), "skipped", [], None), (Query("EXECUTE s1"), "rows", [("r2", "x")], None))
    ran = [STATEMENTS["b1"], STATEMENTS["r3"], STATEMENTS["r2"]]
    assert prediction_problems(run, ran) == []
    assert prediction_problems(run, [ran[0], STATEMENTS["b4"], ran[1], ran[2]]) == []
    assert len(prediction_problems(run, [ran[0], STATEMENTS["b1"], ran[2]])) == 1
    assert len(prediction_problems(run, [ran[1], ran[0], ran[2]])) == 1
