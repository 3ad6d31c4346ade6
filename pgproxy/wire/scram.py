"""SCRAM-SHA-256 and MD5 password exchanges, sans-IO, as PostgreSQL speaks them.

This is the project's one SCRAM implementation. The proxy is a SCRAM *client*
towards the upstream server (:class:`ScramClient`) and a SCRAM *server* towards
agents that log in with a static secret (:class:`ScramServer`). Both take and
return the bytes carried in the SASL messages' data fields; framing them into
AuthenticationSASLContinue / SASLResponse etc. is the codec's job.

How PostgreSQL profiles RFC 5802 / RFC 7677 (see "SASL Authentication" in the
protocol chapter and ``src/backend/libpq/auth-scram.c``):

* No channel binding here: the client sends the gs2 header ``n,,`` and the
  server accepts ``n`` or ``y`` but refuses ``p=`` (we never offer
  SCRAM-SHA-256-PLUS). No authorization identity (``a=``), no mandatory
  extensions (``m=``).
* The SCRAM user name is ignored (the startup packet names the role), so
  libpq sends ``n=`` with an empty name; so do we.
* The password is SASLprep'ed (RFC 4013) when it is valid SASLprep; otherwise
  the raw UTF-8 bytes are used, exactly as PostgreSQL's ``pg_saslprep`` callers
  do, so passwords that PostgreSQL accepts always work.
* Stored secrets have the form
  ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (base64).

Example, both sides in one process::

    client = ScramClient("pencil")
    server = ScramServer(make_scram_secret("pencil"))
    server_first = server.server_first(client.client_first())
    server_final = server.server_final(client.client_final(server_first))
    client.verify_server_final(server_final)   # raises ScramError on failure
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass, field
from enum import Enum, auto

__all__ = [
    "ScramClient",
    "ScramError",
    "ScramSecret",
    "ScramServer",
    "make_scram_secret",
    "md5_password",
    "parse_scram_secret",
    "saslprep",
]

MECHANISM = "SCRAM-SHA-256"
_KEY_LEN = 32  # SHA-256 digest size
_NONCE_RAW_LEN = 18  # libpq and the backend both use 18 random bytes, base64-encoded
_SALT_LEN = 16  # PostgreSQL's SCRAM_DEFAULT_SALT_LEN
_MAX_ITERATIONS = 2**31 - 1  # PostgreSQL keeps the count in an int
_GS2_HEADER = b"n,,"


class ScramError(Exception):
    """A SCRAM exchange failed; str() says what failed and never includes a secret."""


# --- SASLprep (RFC 4013), as PostgreSQL's src/common/saslprep.c applies it --------------


def _raw_bytes(text: str) -> bytes:
    # Strings decoded from the wire or the environment may carry undecodable
    # bytes as lone surrogates (surrogateescape); give those bytes back.
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _is_prohibited(char: str) -> bool:
    return (
        stringprep.in_table_c12(char)
        or stringprep.in_table_c21_c22(char)
        or stringprep.in_table_c3(char)
        or stringprep.in_table_c4(char)
        or stringprep.in_table_c5(char)
        or stringprep.in_table_c6(char)
        or stringprep.in_table_c7(char)
        or stringprep.in_table_c8(char)
        or stringprep.in_table_c9(char)
        or stringprep.in_table_a1(char)  # unassigned code points: "stored strings" profile
    )


def saslprep(password: str) -> bytes:
    """Return the bytes SCRAM hashes for `password`, as PostgreSQL computes them.

    Pure ASCII is used as is. Otherwise RFC 4013 is applied: non-ASCII spaces
    map to SPACE, "commonly mapped to nothing" characters are dropped, the
    result is NFKC-normalised and checked for prohibited, unassigned and
    badly-mixed bidirectional characters. When any check fails (or the string
    is not valid UTF-8, or maps to nothing) the raw bytes are used instead,
    because that is what PostgreSQL does (``pg_saslprep`` and its callers).

    >>> saslprep("I\\u00adX")
    b'IX'
    """
    raw = _raw_bytes(password)
    if password.isascii():
        return raw
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
    # U+200B is in both tables; PostgreSQL checks the space table first.
    mapped = "".join(
        " " if stringprep.in_table_c12(char) else char
        for char in password
        if stringprep.in_table_c12(char) or not stringprep.in_table_b1(char)
    )
    if not mapped:
        return raw  # PostgreSQL refuses to turn a password into an empty one
    # PostgreSQL runs the prohibited, unassigned and bidi checks on the mapped
    # string *before* NFKC (RFC 4013 says after); follow it, or passwords that
    # PostgreSQL stores would not verify here. Checked against a real server.
    if any(_is_prohibited(char) for char in mapped):
        return raw
    # RFC 3454 section 6: a string with right-to-left characters must not
    # contain left-to-right ones, and must start and end with right-to-left ones.
    if any(stringprep.in_table_d1(char) for char in mapped) and (
        any(stringprep.in_table_d2(char) for char in mapped)
        or not stringprep.in_table_d1(mapped[0])
        or not stringprep.in_table_d1(mapped[-1])
    ):
        return raw
    return unicodedata.normalize("NFKC", mapped).encode("utf-8")


# --- Primitives --------------------------------------------------------------------------


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


def _salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    # Hi() of RFC 5802 is PBKDF2 with HMAC-SHA-256 and one output block.
    return hashlib.pbkdf2_hmac("sha256", saslprep(password), salt, iterations)


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def _b64decode(data: bytes | str, what: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ScramError(f"malformed SCRAM message: {what} is not valid base64") from None


def _new_nonce() -> str:
    return base64.b64encode(secrets.token_bytes(_NONCE_RAW_LEN)).decode("ascii")


def _check_nonce(nonce: str) -> bytes:
    # RFC 5802: printable ASCII except ','.
    if not nonce or not all(0x21 <= ord(c) <= 0x7E and c != "," for c in nonce):
        raise ValueError("a SCRAM nonce must be printable ASCII without ','")
    return nonce.encode("ascii")


def _valid_nonce(nonce: bytes) -> bool:
    return bool(nonce) and all(0x21 <= b <= 0x7E and b != 0x2C for b in nonce)


# --- Stored secrets ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScramSecret:
    """A parsed PostgreSQL SCRAM-SHA-256 secret (what pg_authid.rolpassword stores)."""

    iterations: int
    salt: bytes
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def __str__(self) -> str:
        """The secret in PostgreSQL's text format."""
        return (
            f"{MECHANISM}${self.iterations}:{base64.b64encode(self.salt).decode()}"
            f"${base64.b64encode(self.stored_key).decode()}"
            f":{base64.b64encode(self.server_key).decode()}"
        )


def _secret_from_password(password: str, salt: bytes, iterations: int) -> ScramSecret:
    salted = _salted_password(password, salt, iterations)
    return ScramSecret(
        iterations=iterations,
        salt=salt,
        stored_key=_sha256(_hmac(salted, b"Client Key")),
        server_key=_hmac(salted, b"Server Key"),
    )


def make_scram_secret(password: str, *, iterations: int = 4096, salt: bytes | None = None) -> str:
    """Build a secret in PostgreSQL's stored format, as ``ALTER ROLE … PASSWORD`` would.

    >>> make_scram_secret("pencil", salt=b"0123456789abcdef").startswith("SCRAM-SHA-256$4096:")
    True
    """
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ValueError(f"SCRAM iteration count must be from 1 to {_MAX_ITERATIONS}")
    if salt is None:
        salt = secrets.token_bytes(_SALT_LEN)
    if not salt:
        raise ValueError("SCRAM salt must not be empty")
    return str(_secret_from_password(password, salt, iterations))


def parse_scram_secret(secret: str) -> ScramSecret:
    """Parse ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``.

    Raises ValueError, without echoing the secret, when the text is not such a secret.
    """
    try:
        mechanism, iteration_salt, keys = secret.split("$")
        iterations_text, salt_b64 = iteration_salt.split(":")
        stored_b64, server_b64 = keys.split(":")
    except ValueError:
        raise ValueError(
            "not a SCRAM secret: expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"
        ) from None
    if mechanism != MECHANISM:
        raise ValueError(f"not a SCRAM secret: mechanism must be {MECHANISM}")
    if not iterations_text.isascii() or not iterations_text.isdigit():
        raise ValueError("not a SCRAM secret: iteration count is not a number")
    iterations = int(iterations_text)
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ValueError(f"not a SCRAM secret: iteration count must be from 1 to {_MAX_ITERATIONS}")
    decoded: list[bytes] = []
    for name, text in (("salt", salt_b64), ("StoredKey", stored_b64), ("ServerKey", server_b64)):
        try:
            decoded.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise ValueError(f"not a SCRAM secret: {name} is not valid base64") from None
    salt, stored_key, server_key = decoded
    if not salt:
        raise ValueError("not a SCRAM secret: salt is empty")
    if len(stored_key) != _KEY_LEN or len(server_key) != _KEY_LEN:
        raise ValueError(f"not a SCRAM secret: keys must be {_KEY_LEN} bytes")
    return ScramSecret(iterations, salt, stored_key, server_key)


# --- Message parsing ---------------------------------------------------------------------


def _attributes(message: bytes, what: str) -> list[tuple[str, bytes]]:
    """Split ``a=value,b=value`` into (name, value) pairs; names are one ASCII letter."""
    pairs: list[tuple[str, bytes]] = []
    for part in message.split(b","):
        if len(part) < 2 or part[1:2] != b"=" or not part[:1].isalpha():
            raise ScramError(f"malformed SCRAM message: {what} has an invalid attribute")
        pairs.append((chr(part[0]), part[2:]))
    return pairs


def _expect(pairs: list[tuple[str, bytes]], index: int, name: str, what: str) -> bytes:
    if index >= len(pairs) or pairs[index][0] != name:
        raise ScramError(f'malformed SCRAM message: {what} lacks attribute "{name}"')
    return pairs[index][1]


class _Step(Enum):
    START = auto()
    FIRST_SENT = auto()
    FINAL_SENT = auto()
    DONE = auto()
    FAILED = auto()


# --- Client: the proxy logging in to the upstream ----------------------------------------


class ScramClient:
    """The client side of SCRAM-SHA-256 (the proxy authenticating to the upstream).

    Feed it the data of AuthenticationSASLContinue and AuthenticationSASLFinal;
    send what it returns as SASLInitialResponse / SASLResponse data.
    `username` only exists to reproduce the RFC examples; PostgreSQL ignores it.
    """

    mechanism = MECHANISM

    def __init__(self, password: str, *, nonce: str | None = None, username: str = "") -> None:
        self._password = password
        self._nonce = _check_nonce(nonce if nonce is not None else _new_nonce())
        name = _raw_bytes(username).replace(b"=", b"=3D").replace(b",", b"=2C")
        self._first_bare = b"n=" + name + b",r=" + self._nonce
        self._server_signature = b""
        self._step = _Step.START

    def __repr__(self) -> str:
        return f"<ScramClient {self._step.name.lower()}>"

    def client_first(self) -> bytes:
        """The client-first-message: the data of SASLInitialResponse."""
        if self._step not in (_Step.START, _Step.FIRST_SENT):
            raise ScramError("SCRAM exchange out of order: client-first-message already sent")
        self._step = _Step.FIRST_SENT
        return _GS2_HEADER + self._first_bare

    def client_final(self, server_first: bytes) -> bytes:
        """Answer the server-first-message with the client-final-message (with the proof)."""
        if self._step is not _Step.FIRST_SENT:
            raise ScramError("SCRAM exchange out of order: expected server-first-message")
        self._step = _Step.FAILED
        what = "server-first-message"
        pairs = _attributes(bytes(server_first), what)
        if pairs and pairs[0][0] == "m":
            raise ScramError("server requires an unsupported SCRAM extension")
        nonce = _expect(pairs, 0, "r", what)
        salt = _b64decode(_expect(pairs, 1, "s", what), "salt")
        iterations_text = _expect(pairs, 2, "i", what)
        if not _valid_nonce(nonce):
            raise ScramError("malformed SCRAM message: invalid server nonce")
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise ScramError("invalid SCRAM response: nonce mismatch")
        if not salt:
            raise ScramError("invalid SCRAM response: empty salt")
        if not iterations_text.isdigit() or not 1 <= int(iterations_text) <= _MAX_ITERATIONS:
            raise ScramError("invalid SCRAM response: invalid iteration count")
        iterations = int(iterations_text)

        salted = _salted_password(self._password, salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        server_key = _hmac(salted, b"Server Key")
        final_without_proof = b"c=" + _b64(_GS2_HEADER) + b",r=" + nonce
        auth_message = self._first_bare + b"," + bytes(server_first) + b"," + final_without_proof
        proof = _xor(client_key, _hmac(_sha256(client_key), auth_message))
        self._server_signature = _hmac(server_key, auth_message)
        self._step = _Step.FINAL_SENT
        return final_without_proof + b",p=" + _b64(proof)

    def verify_server_final(self, server_final: bytes) -> None:
        """Check the server-final-message proves the server knows the password's secret."""
        if self._step is not _Step.FINAL_SENT:
            raise ScramError("SCRAM exchange out of order: expected server-final-message")
        self._step = _Step.FAILED
        what = "server-final-message"
        pairs = _attributes(bytes(server_final), what)
        if pairs and pairs[0][0] == "e":
            reason = pairs[0][1].decode("ascii", "replace")
            raise ScramError(f"server rejected SCRAM authentication: {reason}")
        signature = _b64decode(_expect(pairs, 0, "v", what), "server signature")
        if not hmac.compare_digest(signature, self._server_signature):
            raise ScramError("invalid server signature: the server does not know the password")
        self._step = _Step.DONE


# --- Server: agents logging in to the proxy with a static secret -------------------------


class ScramServer:
    """The server side of SCRAM-SHA-256, verifying a client against a stored secret.

    Feed it SASLInitialResponse and SASLResponse data; send what it returns as
    AuthenticationSASLContinue and AuthenticationSASLFinal data. Every failure
    raises ScramError; a wrong password says only "password authentication failed".
    """

    mechanism = MECHANISM

    def __init__(self, secret: str | ScramSecret, *, nonce: str | None = None) -> None:
        self._secret = secret if isinstance(secret, ScramSecret) else parse_scram_secret(secret)
        self._server_nonce = _check_nonce(nonce if nonce is not None else _new_nonce())
        self._gs2_header = b""
        self._client_first_bare = b""
        self._server_first = b""
        self._nonce = b""
        self._step = _Step.START

    def __repr__(self) -> str:
        return f"<ScramServer {self._step.name.lower()}>"

    def server_first(self, client_first: bytes) -> bytes:
        """Read the client-first-message and return the server-first-message."""
        if self._step is not _Step.START:
            raise ScramError("SCRAM exchange out of order: client-first-message already received")
        self._step = _Step.FAILED
        data = bytes(client_first)
        what = "client-first-message"
        # gs2-header = gs2-cbind-flag "," [ authzid ] ","
        parts = data.split(b",", 2)
        if len(parts) != 3:
            raise ScramError(f"malformed SCRAM message: {what} has no gs2 header")
        flag, authzid, bare = parts
        if flag.startswith(b"p="):
            raise ScramError("SCRAM channel binding was requested but is not supported")
        # "y": the client could bind but thinks we cannot; true, we never offer -PLUS.
        if flag not in (b"n", b"y"):
            raise ScramError(f"malformed SCRAM message: {what} has an invalid channel binding flag")
        if authzid:
            if authzid.startswith(b"a="):
                raise ScramError("SCRAM authorization identity is not supported")
            raise ScramError(f"malformed SCRAM message: {what} has an invalid gs2 header")
        pairs = _attributes(bare, what)
        if pairs and pairs[0][0] == "m":
            raise ScramError("client requires an unsupported SCRAM extension")
        _expect(pairs, 0, "n", what)  # PostgreSQL ignores the SCRAM user name
        client_nonce = _expect(pairs, 1, "r", what)
        if not _valid_nonce(client_nonce):
            raise ScramError("malformed SCRAM message: invalid client nonce")

        self._gs2_header = flag + b"," + authzid + b","
        self._client_first_bare = bare
        self._nonce = client_nonce + self._server_nonce
        secret = self._secret
        self._server_first = (
            b"r=" + self._nonce
            + b",s=" + _b64(secret.salt)
            + b",i=" + str(secret.iterations).encode("ascii")
        )
        self._step = _Step.FIRST_SENT
        return self._server_first

    def server_final(self, client_final: bytes) -> bytes:
        """Verify the client-final-message's proof; return the server-final-message."""
        if self._step is not _Step.FIRST_SENT:
            raise ScramError("SCRAM exchange out of order: expected client-first-message first")
        self._step = _Step.FAILED
        data = bytes(client_final)
        what = "client-final-message"
        final_without_proof, separator, proof_b64 = data.rpartition(b",p=")
        if not separator:
            raise ScramError(f'malformed SCRAM message: {what} lacks attribute "p"')
        pairs = _attributes(final_without_proof, what)
        binding = _b64decode(_expect(pairs, 0, "c", what), "channel binding")
        nonce = _expect(pairs, 1, "r", what)
        proof = _b64decode(proof_b64, "proof")
        if not hmac.compare_digest(binding, self._gs2_header):
            raise ScramError("SCRAM channel binding check failed")
        if not hmac.compare_digest(nonce, self._nonce):
            raise ScramError("SCRAM nonce mismatch")
        if len(proof) != _KEY_LEN:
            raise ScramError("malformed SCRAM message: proof has the wrong length")

        auth_message = (
            self._client_first_bare + b"," + self._server_first + b"," + final_without_proof
        )
        secret = self._secret
        client_key = _xor(proof, _hmac(secret.stored_key, auth_message))
        if not hmac.compare_digest(_sha256(client_key), secret.stored_key):
            raise ScramError("password authentication failed")
        self._step = _Step.DONE
        return b"v=" + _b64(_hmac(secret.server_key, auth_message))


# --- MD5 ---------------------------------------------------------------------------------


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """The PasswordMessage body for AuthenticationMD5Password (without the NUL).

    ``"md5" + md5_hex(md5_hex(password + user) + salt)``, as libpq computes it.
    """
    inner = hashlib.md5(_raw_bytes(password) + _raw_bytes(user), usedforsecurity=False)
    outer = hashlib.md5(inner.hexdigest().encode("ascii") + salt, usedforsecurity=False)
    return b"md5" + outer.hexdigest().encode("ascii")
