"""Column-name hints: which kinds of personal data a column's name suggests.

A name is split into lowercase words the way people write identifiers (``e_mail``,
``contactEmail``, ``DateOfBirth``, ``CUSTOMER_SSN``, ``phone2``), then matched
against phrases of one or more words::

    name_hints("contactEmail")       # frozenset({'EMAIL_ADDRESS', 'PHONE_NUMBER'})
    name_hints("DateOfBirth")        # frozenset({'DATE_OF_BIRTH'})
    name_hints("order_number")       # frozenset()

A hint alone never tags a column with values in it; it is evidence that, together
with matching values, lets the weaker recognizers (phone numbers, SSNs, IP
addresses, dates) count.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# Entity names are Presidio's, plus DATE_OF_BIRTH (a date in a column named for births).
_PHRASES: dict[str, tuple[str, ...]] = {
    "EMAIL_ADDRESS": ("email", "e mail", "mail", "email address", "emailaddress", "contact"),
    "PHONE_NUMBER": ("phone", "phonenumber", "phone number", "mobile", "mobilephone", "tel", "telephone",
                     "cell", "cellphone", "fax", "msisdn", "contact"),
    "US_SSN": ("ssn", "social security", "socialsecurity", "social security number", "socsec"),
    "DATE_OF_BIRTH": ("dob", "birth", "birthday", "birthdate", "date of birth", "dateofbirth", "born"),
    "LOCATION": ("address", "street", "street address", "addr", "postcode", "postal code", "zip", "zipcode",
                 "zip code", "home address", "billing address", "shipping address"),
    "IBAN_CODE": ("iban",),
    "US_PASSPORT": ("passport", "passport number", "passport no"),
    "US_DRIVER_LICENSE": ("driver license", "drivers license", "driving licence", "driver licence", "dl number"),
    "US_BANK_NUMBER": ("bank account", "account number", "acct number", "routing number"),
    "IP_ADDRESS": ("ip", "ip address", "ipaddr", "ip addr", "ipaddress", "remote addr", "client ip"),
    "CREDIT_CARD": ("credit card", "creditcard", "card number", "cardnumber", "cc number", "ccnum", "pan"),
    "PERSON": ("name", "first name", "firstname", "last name", "lastname", "full name", "fullname",
               "given name", "family name", "surname", "middle name", "forename", "maiden name"),
}
# "name" is a person's only beside these words (or alone): product_name, table_name are not.
_PERSON_OWNERS = frozenset({"customer", "person", "contact", "employee", "patient", "owner", "holder", "author",
                            "member", "client", "user", "recipient", "sender", "buyer", "cardholder", "account",
                            "display", "legal", "billing", "shipping"})
# "address" after these is not a postal address.
_NOT_POSTAL = frozenset({"ip", "email", "e", "mail", "mac", "web", "url", "wallet", "remote", "server", "host",
                         "bitcoin", "btc", "eth", "contract", "memory", "return"})

_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


def words(column_name: str) -> list[str]:
    """``"contactEmail2"`` -> ``['contact', 'email']``; digits are dropped."""
    found: list[str] = []
    for part in re.split(r"[^A-Za-z0-9]+", column_name):
        found.extend(word.lower() for word in _CAMEL.findall(part) if not word.isdigit())
    return found


def name_hints(column_name: str, extra: Mapping[str, Iterable[str]] | None = None) -> frozenset[str]:
    """The entities a column's name suggests; `extra` adds phrases per entity (custom recognizers'
    context words)."""
    found_words = words(column_name)
    if not found_words:
        return frozenset()
    phrases: dict[str, list[str]] = {entity: list(p) for entity, p in _PHRASES.items()}
    for entity, more in (extra or {}).items():
        phrases.setdefault(entity, []).extend(more)
    hints: set[str] = set()
    for entity, entity_phrases in phrases.items():
        for phrase in entity_phrases:
            phrase_words = words(phrase)
            if phrase_words and _contains(found_words, phrase_words, entity):
                hints.add(entity)
                break
    return frozenset(hints)


def _contains(found: list[str], phrase: list[str], entity: str) -> bool:
    size = len(phrase)
    joined = "".join(phrase)
    for start in range(len(found)):
        window = found[start:start + size]
        if window != phrase and not (size > 1 and found[start] == joined):
            continue
        before = found[start - 1] if start else None
        if entity == "PERSON" and phrase == ["name"]:
            return len(found) == 1 or before in _PERSON_OWNERS
        if entity == "LOCATION" and phrase == ["address"]:
            return before not in _NOT_POSTAL
        return True
    return False
