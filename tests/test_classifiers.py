"""classifiers/: column-name hints, value evidence, custom recognizers from YAML, and no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from classifiers import Classifier, name_hints
from classifiers.custom import load_recognizers
from pgproxy.catalog import load_catalog
from pgproxy.catalog_edit import CatalogEditError, add_tags
from pgproxy.config import ConfigError


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier()


@pytest.mark.parametrize(("column", "expected"), [
    ("email", {"EMAIL_ADDRESS"}), ("e_mail", {"EMAIL_ADDRESS"}), ("contactEmail", {"EMAIL_ADDRESS", "PHONE_NUMBER"}),
    ("EmailAddress", {"EMAIL_ADDRESS"}), ("EMAIL_ADDRESS", {"EMAIL_ADDRESS"}), ("mail", {"EMAIL_ADDRESS"}),
    ("phone", {"PHONE_NUMBER"}), ("mobilePhone2", {"PHONE_NUMBER"}), ("ssn", {"US_SSN"}),
    ("CUSTOMER_SSN", {"US_SSN"}), ("dob", {"DATE_OF_BIRTH"}), ("DateOfBirth", {"DATE_OF_BIRTH"}),
    ("birth_date", {"DATE_OF_BIRTH"}), ("home_address", {"LOCATION"}), ("ip_address", {"IP_ADDRESS"}),
    ("IPAddress", {"IP_ADDRESS"}), ("iban", {"IBAN_CODE"}), ("passport_no", {"US_PASSPORT"}),
    ("name", {"PERSON"}), ("customer_name", {"PERSON"}), ("lastName", {"PERSON"}),
    ("product_name", set()), ("order_number", set()), ("sku", set()), ("created_at", set()),
    ("mailing_status", set()), ("hotel", set()),
])
def test_name_hints(column: str, expected: set[str]) -> None:
    assert name_hints(column) == expected


def emails(n: int) -> list[str]:
    return [f"person{i}@example.com" for i in range(n)]


def test_a_contact_column_full_of_emails_is_tagged(classifier: Classifier) -> None:
    evidence = classifier.classify(emails(60), "contact")
    assert evidence.entities["EMAIL_ADDRESS"] == 1.0
    assert evidence.suggested == {"pii", "pii.email"}
    assert evidence.confidence == "high"


def test_emails_tag_a_column_whatever_its_name(classifier: Classifier) -> None:
    assert classifier.classify(emails(60), "notes").suggested == {"pii", "pii.email"}


@pytest.mark.parametrize(("column", "values"), [
    ("order_number", [f"212-555-{i:04d}" for i in range(60)]),             # phone-shaped
    ("sku", [f"{100 + i:03d}-{10 + i:02d}-{1000 + i:04d}" for i in range(60)]),  # SSN-shaped
    ("request_id", [f"550e8400-e29b-41d4-a716-4466554400{i:02d}" for i in range(60)]),
    ("checksum", [f"d41d8cd98f00b204e9800998ecf84{i:03d}" for i in range(60)]),
    ("version", [f"1.{i}.{i % 7}.{i % 3}" for i in range(60)]),           # IP-shaped
    ("created", [f"2024-03-{i % 28 + 1:02d} 10:{i % 60:02d}:00+00" for i in range(60)]),
    ("status", ["open", "closed", "pending"] * 20),
])
def test_decoys_get_no_tags(classifier: Classifier, column: str, values: list[str]) -> None:
    evidence = classifier.classify(values, column)
    assert evidence.suggested == frozenset(), evidence


@pytest.mark.parametrize(("column", "values", "tags"), [
    ("phone", [f"+1-212-555-01{i % 100:02d}" for i in range(60)], {"pii", "pii.phone"}),
    ("ssn", [f"9{i % 90 + 10:02d}-{i % 89 + 10:02d}-{i + 1:04d}" for i in range(60)],
     {"pii", "pii.ssn", "sensitive"}),
    ("dob", [f"19{50 + i % 40}-0{i % 9 + 1}-1{i % 9}" for i in range(60)], {"pii", "pii.birth_date"}),
    ("client_ip", [f"10.1.{i}.{i % 250}" for i in range(60)], {"pii", "pii.ip_address"}),
    ("full_name", ["Ada Lovelace", "Grace Hopper", "Alan Turing"] * 20, {"pii", "pii.name"}),
    ("iban", ["DE89370400440532013000", "GB82WEST12345698765432"] * 30, {"pii", "pii.iban", "sensitive"}),
    ("payment", ["4111111111111111", "5500000000000004"] * 30, {"pii", "pii.credit_card", "sensitive"}),
])
def test_value_evidence_with_a_name_hint(classifier: Classifier, column: str, values: list[str],
                                         tags: set[str]) -> None:
    assert classifier.classify(values, column).suggested == tags


def test_free_text_with_some_emails(classifier: Classifier) -> None:
    values = [f"My order {i} is late." for i in range(90)] + [f"Write to me at user{i}@example.net." for i in range(10)]
    evidence = classifier.classify(values, "body")
    assert evidence.entities["EMAIL_ADDRESS"] == pytest.approx(0.1)
    assert evidence.suggested == {"pii", "pii.email"}
    assert evidence.confidence == "medium"


def test_nulls_and_blanks_are_not_sampled_and_an_empty_hinted_column_is_suggested(classifier: Classifier) -> None:
    evidence = classifier.classify([None, "", "  "], "ssn")
    assert evidence.sampled == 0
    assert evidence.suggested == {"pii", "pii.ssn", "sensitive"}
    assert evidence.confidence == "low"
    assert classifier.classify([None], "status").suggested == frozenset()


def test_a_hint_alone_does_not_tag_values_that_do_not_match(classifier: Classifier) -> None:
    assert classifier.classify(["n/a", "unknown", "-"] * 20, "phone").suggested == frozenset()


# --- Custom recognizers -------------------------------------------------------------------


def test_custom_recognizers(tmp_path: Path) -> None:
    path = tmp_path / "recognizers.yaml"
    path.write_text(textwrap.dedent("""\
        recognizers:
          - entity: EMPLOYEE_ID
            patterns: ['\\bEMP-\\d{6}\\b']
            context: [employee, staff]
            tags: [pii, pii.employee_id]
          - entity: BADGE
            patterns: [{regex: '\\bB\\d{4}\\b', score: 0.4}]
            tags: pii
            strong: false
        entity_tags:
          PHONE_NUMBER: [pii, pii.phone, contact]
        """))
    custom = load_recognizers(path)
    classifier = custom.classifier()
    employees = [f"EMP-{i:06d}" for i in range(40)]
    assert classifier.classify(employees, "ref").suggested == {"pii", "pii.employee_id"}
    assert name_hints("staffNumber", custom.hint_phrases) == {"EMPLOYEE_ID"}
    badges = [f"B{i:04d}" for i in range(40)]
    assert classifier.classify(badges, "code").suggested == frozenset()  # weak: needs a name hint
    assert classifier.classify([f"+1-212-555-01{i:02d}" for i in range(40)], "phone").suggested == \
        {"pii", "pii.phone", "contact"}


@pytest.mark.parametrize(("text", "line", "message"), [
    ("recognizers:\n  - entity: X\n    patterns: ['(unclosed']\n    tags: [pii]\n", 3,
     "recognizers[0].patterns[0]: invalid regular expression"),
    ("recognizers:\n  - entity: employee_id\n    patterns: ['E\\d+']\n    tags: [pii]\n", 2,
     "recognizers[0].entity: invalid entity name 'employee_id'"),
    ("recognizers:\n  - entity: X\n    patterns: ['E\\d+']\n    tags: [PII]\n", 4,
     "recognizers[0].tags[0]: invalid tag 'PII'"),
    ("recognizers:\n  - entity: X\n    patterns: ['E\\d+']\n    tags: [pii]\n    contxt: [a]\n", 5,
     "recognizers[0].contxt: unknown key 'contxt'"),
    ("recognizers:\n  - entity: X\n    patterns: ['\\d*']\n    tags: [pii]\n", 3,
     "recognizers[0].patterns[0]: the regular expression matches empty text"),
    ("recognizers:\n  - entity: X\n    tags: [pii]\n", 2, "recognizers[0].patterns: required key is missing"),
    ("entity_tags:\n  PHONE: [pii]\n", 2, "entity_tags.PHONE: unknown entity 'PHONE'"),
    ("recognizers:\n  - entity: X\n    patterns: [{regex: 'E\\d+', score: 2}]\n    tags: [pii]\n", 3,
     "recognizers[0].patterns[0].score: expected a score from 0 to 1"),
])
def test_recognizer_file_errors_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "recognizers.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_recognizers(path)
    assert str(caught.value).startswith(f"{path}:{line}: {message}"), str(caught.value)


# --- No network -------------------------------------------------------------------------------

_NO_NETWORK = """
import ipaddress, json, socket, sys
attempts = []

def loopback(host):
    try:
        return ipaddress.ip_address(str(host).split('%')[0]).is_loopback
    except ValueError:
        return host == 'localhost'

def guard(original, where):
    def patched(*args, **kwargs):
        address = args[1] if where == 'connect' else args[0]
        host = address[0] if isinstance(address, tuple) else address
        if not loopback(host):
            attempts.append(f'{where} {host}')
            raise OSError('network disabled by the test')
        return original(*args, **kwargs)
    return patched

socket.socket.connect = guard(socket.socket.connect, 'connect')
socket.socket.connect_ex = guard(socket.socket.connect_ex, 'connect')
socket.getaddrinfo = guard(socket.getaddrinfo, 'getaddrinfo')
socket.create_connection = guard(socket.create_connection, 'create_connection')

from classifiers.custom import load_recognizers
classifier = load_recognizers(__import__('pathlib').Path(sys.argv[1])).classifier()
found = classifier.classify(['ada@example.com', 'see https://www.example.org/x', 'call +1 212 555 0100',
                             'DE89370400440532013000', '10.0.0.1', 'EMP-000001'], 'contact')
# Run-time sampling's worker (pgproxy.sampling) loads and classifies the same way.
from pgproxy.sampling import _Worker
worker = _Worker(__import__('pathlib').Path(sys.argv[1]))
detections, classified = worker.batch([('app', 1, 2, 'notes', 'utf-8', [b'ada@example.com', b'EMP-000002'] * 3)])
print(json.dumps({'attempts': attempts, 'entities': sorted(found.entities),
                  'sampled': [sorted(d['entities']) for d in detections]}))
"""


def test_classifiers_load_and_run_without_network(tmp_path: Path, repo_root: Path) -> None:
    recognizers = tmp_path / "recognizers.yaml"
    recognizers.write_text("recognizers:\n  - {entity: EMPLOYEE_ID, patterns: ['EMP-\\d{6}'], tags: [pii]}\n")
    home = tmp_path / "home"  # no tldextract cache to fall back on
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TLDEXTRACT", "XDG_"))}
    env.update(HOME=str(home), PYTHONPATH=str(repo_root))
    done = subprocess.run([sys.executable, "-c", _NO_NETWORK, str(recognizers)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["attempts"] == []
    # The email recognizer's domain check worked from the bundled suffix list.
    assert {"EMAIL_ADDRESS", "URL", "IBAN_CODE", "IP_ADDRESS", "PHONE_NUMBER", "EMPLOYEE_ID"} <= set(
        report["entities"])
    assert not list(home.rglob("*")), "nothing may be cached under HOME"
    assert report["sampled"] == [["EMAIL_ADDRESS", "EMPLOYEE_ID", "URL"]]


# --- Editing the catalog file ----------------------------------------------------------------

CATALOG = """\
# Which columns hold personal data.
app:
  public:        # the default schema
    customers:
      name: [pii, pii.name]   # people's names
      email: pii
      phone:
        - pii
        - pii.phone
    # orders hold no PII

other:
  public:
    t: {a: pii}
"""


def test_add_tags_keeps_comments_and_order(tmp_path: Path) -> None:
    text = add_tags(CATALOG, "app", {
        ("public", "customers", "email"): {"pii", "pii.email"},
        ("public", "customers", "phone"): {"pii", "pii.phone", "contact"},
        ("public", "customers", "ssn"): {"pii", "sensitive"},
        ("public", "support_tickets", "body"): {"pii", "pii.email"},
        ("crm", "Leads", "e-mail"): {"pii"},
    })
    assert text == """\
# Which columns hold personal data.
app:
  public:        # the default schema
    customers:
      name: [pii, pii.name]   # people's names
      email: [pii, pii.email]
      phone:
        - pii
        - pii.phone
        - contact
      ssn: [pii, sensitive]
    support_tickets:
      body: [pii, pii.email]
  crm:
    Leads:
      "e-mail": [pii]
    # orders hold no PII

other:
  public:
    t: {a: pii}
"""
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    tags = load_catalog(path).tags_for("app")
    assert tags[("public", "customers")]["ssn"] == {"pii", "sensitive"}
    assert tags[("crm", "Leads")]["e-mail"] == {"pii"}


def test_add_tags_to_a_new_database_and_an_empty_file() -> None:
    assert add_tags(CATALOG, "shop", {("public", "t", "c"): {"pii"}}).endswith(
        "    t: {a: pii}\nshop:\n  public:\n    t:\n      c: [pii]\n")
    assert add_tags("", "app", {("public", "t", "c"): {"pii"}}) == "app:\n  public:\n    t:\n      c: [pii]\n"


def test_add_tags_refuses_flow_mappings() -> None:
    with pytest.raises(CatalogEditError, match=r"line 14: cannot add to a flow-style mapping \(\{...\}\)"):
        add_tags(CATALOG, "other", {("public", "t", "b"): {"pii"}})
