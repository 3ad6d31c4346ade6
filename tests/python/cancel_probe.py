"""What a psycopg 3 program sees when it cancels a statement, run as a program of its own:

    python cancel_probe.py CONNECTION_STRING SQL METHOD

It connects (autocommit), runs SQL in a thread, and once a line arrives on stdin (the test says the
statement is held, or running) cancels it with METHOD: ``cancel`` (libpq's PQcancel: a CancelRequest
on a new plaintext connection, whatever the session's sslmode) or ``cancel_safe`` (PQcancelConn,
libpq 17+: the new connection negotiates TLS as the session did). It prints one JSON object per line:

    {"cancelled_in": seconds}                                the cancel call returned
    {"error": {"sqlstate", "class", "message", "detail"}}   what the statement raised
    {"rows": [...]}                                          or what it returned
    {"after": [...]}                                         the rows of SELECT 'after cancel' next

Its own process: psycopg's C implementation calls PQcancel without releasing the GIL, and PQcancel
waits until the server closes the cancel connection, so a pgproxy on a thread of the same process
could never answer it (the test would hang, not the proxy).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

import psycopg

WAIT_SECONDS = 60  # bounds on the statement and the cancel call; the test bounds the whole process too


def main(dsn: str, sql: str, method: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        outcome: list[Any] = []

        def run() -> None:
            try:
                outcome.append({"rows": [list(row) for row in conn.execute(sql).fetchall()]})
            except psycopg.Error as exc:
                outcome.append({"error": {"sqlstate": exc.sqlstate, "class": type(exc).__name__,
                                          "message": exc.diag.message_primary, "detail": exc.diag.message_detail}})

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        sys.stdin.readline()
        started = time.monotonic()
        if method == "cancel":
            conn.cancel()
        else:
            conn.cancel_safe(timeout=WAIT_SECONDS)
        print(json.dumps({"cancelled_in": round(time.monotonic() - started, 3)}), flush=True)
        worker.join(WAIT_SECONDS)
        if not outcome:
            print(json.dumps({"hung": True}), flush=True)
            os._exit(3)  # closing the connection would wait for the statement
        print(json.dumps(outcome[0]), flush=True)
        print(json.dumps({"after": [list(row) for row in conn.execute("SELECT 'after cancel'").fetchall()]}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
