"""The policy corpora (tests/corpora/*.sql): statements with the action the demo policy must give.

Format: each case starts with ``-- expect: <allow|review|deny> | <reason>``; its SQL is everything
up to the next such line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CORPORA = Path(__file__).parent / "corpora"
_EXPECT = re.compile(r"^-- expect: (allow|review|deny)\s*\|\s*(.*)$")

# The tags the corpora are written for: the demo catalog plus the objects of setup.sql.
CATALOG = """\
app:
  public:
    customers:
      name: [pii, pii.name]
      email: [pii, pii.email]
      phone: [pii, pii.phone]
      ssn: [pii, pii.ssn, sensitive]
    AuditLog:
      Email: [pii, pii.email]
  crm:
    notes:
      body: [pii]
    contacts:          # created by tests/test_enforce.py, beside an untagged public.contacts
      phone: [pii]
"""


@dataclass(frozen=True, slots=True)
class Case:
    corpus: str
    line: int
    expect: str
    reason: str
    sql: str

    @property
    def id(self) -> str:
        return f"{self.corpus}:{self.line}"


def load(name: str) -> list[Case]:
    cases: list[Case] = []
    current: tuple[int, str, str] | None = None
    body: list[str] = []
    for number, line in enumerate((CORPORA / f"{name}.sql").read_text().splitlines(), 1):
        match = _EXPECT.match(line)
        if match:
            if current is not None:
                cases.append(Case(name, current[0], current[1], current[2], "\n".join(body).strip()))
            current, body = (number, match.group(1), match.group(2)), []
        elif current is not None:
            body.append(line)
    if current is not None:
        cases.append(Case(name, current[0], current[1], current[2], "\n".join(body).strip()))
    return cases
