"""Check that every corpus case is well formed and runs on PostgreSQL (not a pytest module).

    .venv/bin/python tests/corpora/validate.py [-v]

Starts a throwaway server (pgproxy.pgcluster), loads the demo data and setup.sql (twice:
it must be idempotent) into `app` as a non-superuser table owner, then for each case of
risky.sql and benign.sql:

- the header is `-- expect: allow|review|deny | <class>: <reason> [markers]`;
- a `syntax-error` case must fail both pglast and the server with 42601;
- every other case must parse with pglast and run on the server, each in a fresh session,
  inside BEGIN ... ROLLBACK (`[no-tx]` cases as they are, in a scratch copy of `app`);
  COPY ... FROM STDIN gets no rows, COPY ... TO STDOUT is drained;
- as the owner, only `[superuser]` cases may fail with 42501 and only `[extension]` cases
  with 42883; they are then run as the superuser, unless running them would touch server
  files, programs or other hosts (those are only parsed);
- a `[runtime-error]` case must parse and then fail;
- every benign case must run as the owner (the live tests run it through the proxy).

Exit status 0 when every case passes. Nothing is left behind.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pglast
import pglast.ast
import psycopg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from pgproxy.demo.run import demo_sql  # noqa: E402
from pgproxy.pgcluster import PostgresCluster  # noqa: E402

CORPORA = ("risky.sql", "benign.sql")
EXPECT = re.compile(r"^-- expect: (?P<action>allow|review|deny) \| (?P<cls>[a-z][a-z-]*): (?P<reason>.+)$")
MARKERS = {"no-tx", "runtime-error", "superuser", "extension"}
OWNER, OWNER_PASSWORD, DATABASE, SCRATCH = "corpus_owner", "corpus-owner-pass", "app", "app_notx"
# Never executed, even as the superuser: server files, programs, other hosts, server config.
UNSAFE = re.compile(
    r"\bPROGRAM\b|\bTO\s+'|\bFROM\s+'/|lo_export|lo_import|pg_file_write|dblink|ALTER\s+SYSTEM",
    re.IGNORECASE,
)


@dataclass
class Case:
    corpus: str
    line: int
    action: str
    cls: str
    reason: str
    sql: str
    markers: set[str] = field(default_factory=set)

    def __str__(self) -> str:
        return f"{self.corpus}:{self.line} [{self.action} | {self.cls}]"


def load_corpus(path: Path) -> list[Case]:
    """The cases of one corpus file: each header line and the SQL up to the next header."""
    cases: list[Case] = []
    body: list[str] = []
    current: Case | None = None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.startswith("-- expect:"):
            if current is not None:
                current.sql = "\n".join(body).strip()
                cases.append(current)
            match = EXPECT.match(line)
            if match is None:
                raise ValueError(f"{path.name}:{number}: malformed header: {line}")
            reason = match["reason"]
            current = Case(
                path.name, number, match["action"], match["cls"], reason, "", set(re.findall(r"\[([a-z-]+)\]", reason))
            )
            unknown = current.markers - MARKERS
            if unknown:
                raise ValueError(f"{path.name}:{number}: unknown markers {sorted(unknown)}")
            body = []
        elif current is not None:
            body.append(line)
    if current is not None:
        current.sql = "\n".join(body).strip()
        cases.append(current)
    return cases


def run_sql(dsn: str, case: Case) -> str | None:
    """Run a case in a fresh session; None on success, else 'SQLSTATE: message'."""
    try:
        stmts = pglast.parse_sql(case.sql)
    except pglast.parser.ParseError:
        stmts = ()
    copy = stmts[0].stmt if len(stmts) == 1 else None
    single_copy = isinstance(copy, pglast.ast.CopyStmt)
    wrap = "no-tx" not in case.markers
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SET statement_timeout = '20s'")
            cur = conn.cursor()
            if wrap:
                cur.execute("BEGIN")
            if single_copy:
                with cur.copy(case.sql) as copying:
                    if isinstance(copy, pglast.ast.CopyStmt) and not copy.is_from:
                        for _ in copying:
                            pass
            else:
                cur.execute(case.sql.encode())  # bytes: no client-side placeholder handling
                while cur.nextset():
                    pass
            if wrap:
                cur.execute("ROLLBACK")
    except psycopg.Error as exc:
        return f"{exc.sqlstate}: {str(exc).strip().splitlines()[0]}"
    return None


def check(case: Case, owner_dsn: str, super_dsn: str, verbose: bool) -> list[str]:
    """Problems with one case (empty when it passes)."""
    problems: list[str] = []
    if case.action not in ("allow", "review", "deny"):
        problems.append("bad action")
    if case.corpus == "benign.sql" and case.action != "allow":
        problems.append("benign cases must expect allow")
    if case.corpus == "risky.sql" and case.action == "allow":
        problems.append("risky cases must not expect allow")
    if not case.sql:
        return [*problems, "empty SQL"]
    try:
        pglast.parse_sql(case.sql)
        parsed = True
    except pglast.parser.ParseError as exc:
        parsed = False
        parse_error = str(exc)
    if case.cls == "syntax-error":
        if parsed:
            problems.append("pglast parses a syntax-error case")
        outcome = run_sql(owner_dsn, case)
        if outcome is None or not outcome.startswith("42601"):
            problems.append(f"server did not report a syntax error: {outcome}")
        return problems
    if not parsed:
        return [*problems, f"pglast: {parse_error}"]
    if UNSAFE.search(case.sql) and case.action == "deny":
        if verbose:
            print(f"  parse-only {case}")
        return problems
    outcome = run_sql(owner_dsn, case)
    if "runtime-error" in case.markers:
        if outcome is None:
            problems.append("[runtime-error] case ran without error")
        elif verbose:
            print(f"  runtime error as expected {case}: {outcome}")
        return problems
    if outcome is None:
        if "superuser" in case.markers:
            problems.append("marked [superuser] but runs as the owner")
        return problems
    if case.action == "allow":
        return [*problems, f"benign case fails as the owner: {outcome}"]
    allowed_state = {"superuser": "42501", "extension": "42883"}
    if not any(m in case.markers and outcome.startswith(s) for m, s in allowed_state.items()):
        return [*problems, f"fails as the owner: {outcome}"]
    if "extension" in case.markers:
        return problems
    as_super = run_sql(super_dsn, case)
    if as_super is not None:
        problems.append(f"fails as the superuser too: {as_super}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    cases = [case for name in CORPORA for case in load_corpus(HERE / name)]
    setup_sql = (HERE / "setup.sql").read_text()
    failures = 0
    with PostgresCluster() as pg:
        pg.create_role(OWNER, OWNER_PASSWORD)
        pg.create_database(DATABASE, owner=OWNER)
        pg.psql(demo_sql(), dbname=DATABASE, user=OWNER)
        pg.psql(setup_sql, dbname=DATABASE, user=OWNER)
        pg.psql(setup_sql, dbname=DATABASE, user=OWNER)  # idempotent
        pg.psql(f"CREATE DATABASE {SCRATCH} TEMPLATE {DATABASE} OWNER {OWNER}")
        dsns = {
            db: (pg.dsn(user=OWNER, password=OWNER_PASSWORD, dbname=db), pg.dsn(dbname=db))
            for db in (DATABASE, SCRATCH)
        }
        for case in cases:
            owner_dsn, super_dsn = dsns[SCRATCH if "no-tx" in case.markers else DATABASE]
            problems = check(case, owner_dsn, super_dsn, args.verbose)
            if problems:
                failures += 1
                print(f"FAIL {case}: {'; '.join(problems)}\n    {case.sql[:200]!r}")
        # The deny cases never ran against a live server when unsafe: make sure nothing leaked.
        with psycopg.connect(dsns[DATABASE][1], autocommit=True) as conn:
            leftovers = conn.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname IN ('public', 'crm') AND c.relkind IN ('r', 'v', 'm')"
            ).fetchone()
            if leftovers is None or leftovers[0] != 7:  # the tables and views of data.sql and setup.sql
                failures += 1
                print(f"FAIL: the cases left tables or views behind in {DATABASE}: {leftovers}")
    for name in CORPORA:
        in_file = [c for c in cases if c.corpus == name]
        by_action: dict[str, int] = {}
        by_class: dict[str, int] = {}
        for c in in_file:
            by_action[c.action] = by_action.get(c.action, 0) + 1
            by_class[c.cls] = by_class.get(c.cls, 0) + 1
        print(f"{name}: {len(in_file)} cases {dict(sorted(by_action.items()))}")
        print("  " + ", ".join(f"{k} {v}" for k, v in sorted(by_class.items())))
    print(f"{len(cases) - failures} of {len(cases)} cases pass" if failures == 0 else f"{failures} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
