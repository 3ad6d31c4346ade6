"""Tests that search for inputs read without a check: every claim, Slack field and header the
approvals package reads must go through pgproxy.approvals.inputs' tables, and every kind in them
must have wrong values the table-driven tests feed it (tests/malformed.py). A claim or header
added without that fails here, before it can answer 500 or burn a token."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from pgproxy.approvals import inputs
from tests.malformed import MALFORMED

APPROVALS = Path(inputs.__file__).parent
# Raw decoded tokens and Slack's payload: read only in inputs.py, by its tables.
RAW_NAMES = {"claims", "signed", "payload", "action", "user", "form"}
# Headers read elsewhere are only compared with fixed strings or verified as tokens, never parsed.
COMPARED_HEADERS = {"Authorization", "Origin", "Sec-Fetch-Site"}
DYNAMIC_HEADERS = {"sso_header"}  # the configured SSO header: a token, verified as one


def _reads(tree: ast.AST) -> list[tuple[str, int]]:
    """(what, line) for each subscript or .get() of a raw input, and each header read."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Subscript | ast.Call):
            continue
        target: ast.expr | None = None
        key: ast.expr | None = None
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store | ast.Del):
            continue  # setting a response header is not reading an input
        if isinstance(node, ast.Subscript):
            target, key = node.value, node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and node.args:
            target, key = node.func.value, node.args[0]
        if target is None or key is None:
            continue
        if isinstance(target, ast.Name) and target.id in RAW_NAMES:
            found.append((f"{target.id}[{ast.unparse(key)}]", node.lineno))
        if isinstance(target, ast.Attribute) and target.attr == "headers":
            name = str(key.value) if isinstance(key, ast.Constant) else ast.unparse(key)
            if name not in COMPARED_HEADERS | DYNAMIC_HEADERS:
                found.append((f"headers[{name}]", node.lineno))
    return found


def test_no_claim_field_or_header_is_read_past_the_tables() -> None:
    unchecked = []
    for path in sorted(APPROVALS.glob("*.py")):
        if path.name == "inputs.py":
            continue
        unchecked += [f"{path.name}:{line}: {what}" for what, line in _reads(ast.parse(path.read_text()))]
    assert not unchecked, "read these through pgproxy.approvals.inputs (a table entry with a kind):\n" + \
        "\n".join(unchecked)


def test_every_kind_has_wrong_values_to_feed() -> None:
    kinds = {entry.kind for table in (inputs.DECISION_CLAIMS, inputs.SLACK_HEADERS, inputs.SLACK_FIELDS)
             for entry in table.values()}
    assert kinds <= set(inputs.KINDS)
    assert set(inputs.KINDS) <= set(MALFORMED), "add wrong values for the new kind to tests/malformed.py"
    for kind, values in MALFORMED.items():
        for value in values:
            try:
                inputs.KINDS[kind](value)
            except ValueError:
                continue
            raise AssertionError(f"{kind}: {value!r} is accepted")


def test_every_decision_field_comes_from_a_claim() -> None:
    names = {field.name for field in dataclasses.fields(inputs.DecisionClaims)}
    assert names <= set(inputs.DECISION_CLAIMS)


def test_the_search_finds_an_unchecked_read() -> None:
    """The search itself works: it reports a claim read directly, and a header parsed by hand."""
    code = 'x = claims["grant"]\ny = int(request.headers.get("X-Retry", "0"))\n'
    assert _reads(ast.parse(code)) == [("claims['grant']", 1), ("headers[X-Retry]", 2)]
