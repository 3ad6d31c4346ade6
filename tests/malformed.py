"""Wrong values for each kind of input (pgproxy.approvals.inputs.KINDS): what the table-driven
tests feed every claim, header and field. A kind without an entry here fails those tests."""

from __future__ import annotations

from typing import Any

MISSING = object()  # the claim or field left out

MALFORMED: dict[str, list[Any]] = {
    "approval-id": [5, 1.5, True, [], {}, "", "²", "x" * 101, "a b", "a\u200bb", "a:b"],
    "sha256": [5, True, [], {}, "", "²" * 64, "A" * 64, "0" * 63, "0" * 65, "g" * 64],
    "decision": [5, True, None, [], {}, "", "APPROVE", "approve ", "maybe"],
    "name": [5, 1.5, True, [], {}, "", "x" * 257],
    "reason": [5, True, [], {"text": "x"}, "x" * 2001],
    "token-id": [5, True, [], {}, "", "x" * 257],
    "time": ["99999999999", "²", True, [], {}, "soon", float("inf")],
    "names": [5, 1.5, True, {}, [5], ["ok", 7], [""], [["dba"]]],
    "issuer": [5, True, [], {}, ""],
    "audience": [5, True, {}, [], [5]],
    "slack-user": [5, True, [], {}, "", "u0alice", "U0 ALICE", "²", "U" * 33],
    "slack-action": [5, True, [], {}, "", "x" * 256],
    "slack-value": [5, True, [], {}, "", "no-colon", "id:" + "0" * 63, "id:" + "²" * 64, "a b:" + "0" * 64],
    # Header values: text a client can send (latin-1), never another type.
    "slack-timestamp": ["²", "¹²³", "", "-1", "1.5", "1 2", "1e9", "x"],
    "slack-signature": ["", "v0=", "v1=" + "0" * 64, "v0=" + "²" * 64, "v0=" + "G" * 64, "v0=" + "0" * 63],
}
