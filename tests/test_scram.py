"""SCRAM-SHA-256 and MD5: known answers (RFC 7677, secrets made by PostgreSQL 15),
the two sides talking to each other, malformed and hostile messages, and real
clients (libpq through psycopg, asyncpg) logging in against ScramServer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable

import asyncpg
import psycopg
import pytest
from psycopg import sql

from pgproxy.pgcluster import PostgresCluster
from pgproxy.wire.scram import (
    ScramClient,
    ScramError,
    ScramSecret,
    ScramServer,
    make_scram_secret,
    md5_password,
    parse_scram_secret,
    saslprep,
)

# --- RFC 7677 section 3 example ------------------------------------------------------------

RFC_PASSWORD = "pencil"
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_rfc7677_vector_client_and_server() -> None:
    # The RFC's client sends n=user; PostgreSQL's sends n= (the name is ignored).
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE, username="user")
    server = ScramServer(make_scram_secret(RFC_PASSWORD, iterations=4096, salt=RFC_SALT),
                         nonce=RFC_SERVER_NONCE)

    assert client.client_first() == RFC_CLIENT_FIRST
    assert server.server_first(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert client.client_final(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    assert server.server_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    client.verify_server_final(RFC_SERVER_FINAL)


def test_rfc7677_vector_primitives() -> None:
    # The same proof computed straight from RFC 5802's definitions.
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    auth_message = b",".join(
        [RFC_CLIENT_FIRST[3:], RFC_SERVER_FIRST, RFC_CLIENT_FINAL.rsplit(b",p=", 1)[0]]
    )
    signature = hmac.digest(stored_key, auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    assert base64.b64encode(proof) == RFC_CLIENT_FINAL.rsplit(b",p=", 1)[1]
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    assert b"v=" + base64.b64encode(hmac.digest(server_key, auth_message, "sha256")) \
        == RFC_SERVER_FINAL


def test_rfc_server_secret_holds_rfc_keys() -> None:
    secret = parse_scram_secret(make_scram_secret(RFC_PASSWORD, salt=RFC_SALT))
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    assert secret.stored_key == hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    assert secret.server_key == hmac.digest(salted, b"Server Key", "sha256")


# --- Client and server talking to each other ------------------------------------------------


def _exchange(client: ScramClient, server: ScramServer) -> None:
    server_first = server.server_first(client.client_first())
    server_final = server.server_final(client.client_final(server_first))
    client.verify_server_final(server_final)


@pytest.mark.parametrize("password", ["s3cret", "pässwörd", "日本語パスワード", "I\u00adX", ""])
def test_right_password_succeeds(password: str) -> None:
    _exchange(ScramClient(password), ScramServer(make_scram_secret(password)))


def test_wrong_password_fails_without_saying_the_password() -> None:
    client = ScramClient("guess-one")
    server = ScramServer(make_scram_secret("the-real-one"))
    server_first = server.server_first(client.client_first())
    with pytest.raises(ScramError) as failure:
        server.server_final(client.client_final(server_first))
    assert str(failure.value) == "password authentication failed"
    assert "guess-one" not in repr(failure.value) and "the-real-one" not in repr(failure.value)


def test_postgresql_form_of_client_first() -> None:
    first = ScramClient("pw").client_first()
    assert re.fullmatch(rb"n,,n=,r=[A-Za-z0-9+/=]{24}", first)
    assert ScramClient.mechanism == ScramServer.mechanism == "SCRAM-SHA-256"


def test_nonces_are_fresh() -> None:
    assert ScramClient("pw").client_first() != ScramClient("pw").client_first()
    secret = make_scram_secret("pw")
    firsts = {ScramServer(secret).server_first(b"n,,n=,r=abc") for _ in range(2)}
    assert len(firsts) == 2


def test_client_detects_server_that_does_not_know_the_secret() -> None:
    # A server holding a secret for another password cannot forge the server signature,
    # even when it lets the client through (a man in the middle would).
    client = ScramClient("right")
    impostor = ScramServer(make_scram_secret("other"))
    client_final = client.client_final(impostor.server_first(client.client_first()))
    forged = b"v=" + base64.b64encode(b"\0" * 32)
    with pytest.raises(ScramError, match="invalid server signature"):
        client.verify_server_final(forged)
    assert client_final  # the client did send a proof; the server cannot use it elsewhere


def test_client_reports_server_error() -> None:
    client = ScramClient("pw")
    server = ScramServer(make_scram_secret("pw"))
    client.client_final(server.server_first(client.client_first()))
    with pytest.raises(ScramError, match="server rejected SCRAM authentication: invalid-proof"):
        client.verify_server_final(b"e=invalid-proof")


def test_secret_objects_and_strings_both_work() -> None:
    text = make_scram_secret("pw", iterations=10)
    _exchange(ScramClient("pw"), ScramServer(parse_scram_secret(text)))
    _exchange(ScramClient("pw"), ScramServer(text))


def test_out_of_order_calls_raise() -> None:
    client = ScramClient("pw")
    with pytest.raises(ScramError, match="out of order"):
        client.client_final(b"r=x,s=AAAA,i=1")
    with pytest.raises(ScramError, match="out of order"):
        client.verify_server_final(b"v=AAAA")
    server = ScramServer(make_scram_secret("pw"))
    with pytest.raises(ScramError, match="out of order"):
        server.server_final(b"c=biws,r=x,p=AAAA")
    server.server_first(b"n,,n=,r=abc")
    with pytest.raises(ScramError, match="out of order"):
        server.server_first(b"n,,n=,r=abc")


# --- Stored secrets -------------------------------------------------------------------------

# PostgreSQL's own parser (parse_scram_secret in src/backend/libpq/auth-scram.c) in a regex:
# "SCRAM-SHA-256$<iterations>:<salt>$<storedkey>:<serverkey>", base64 keys of 32 bytes.
PG_SECRET = re.compile(
    r"SCRAM-SHA-256\$(?P<iterations>[0-9]+):(?P<salt>[A-Za-z0-9+/]+={0,2})"
    r"\$(?P<stored>[A-Za-z0-9+/]{43}=):(?P<server>[A-Za-z0-9+/]{43}=)"
)

# Secrets PostgreSQL 15 stored for these passwords (CREATE ROLE … PASSWORD with
# password_encryption = scram-sha-256). The odd ones pin its SASLprep quirks:
# U+200B maps to a space, U+0340 is prohibited (raw bytes), U+FB3E passes the bidi
# check on the un-normalised text, U+FE15 was unassigned in Unicode 3.2 (raw bytes).
POSTGRES_SECRETS = {
    "pencil": (
        "SCRAM-SHA-256$4096:dJLuu8WVA1wZK9mwRS7dYA==$"
        "5KsY+YYgR1EaSAUyHlRqeA+m6z5flfuLQhK4XRpvRck=:Gf9PbaTXbiMqDd5A7AZasBTFyIcm2B9iFt/UXR6qy8A="
    ),
    "p\xe4ssw\xf6rd": (
        "SCRAM-SHA-256$4096:mF/yEZmZxks6y6trdqePsg==$"
        "NoT2dfZAVriD2gG1YAoEFzqWhkPMFyT20aE9Bx3ivp0=:tS3GAz/W89NV5sx1cxvawNevfhJ7GcB5l2TjPcSPqtw="
    ),
    "x\u200by": (
        "SCRAM-SHA-256$4096:GyPFfWTMHvpROGXOh/WVwA==$"
        "z7PF/503yVUeOoVmrXLi+v/0E333/rbb+xGE5Dpb1n4=:qaAYvzZFtb/nNxjbvVnrRFj6CmTWcceKIFd7kYJ2eu4="
    ),
    "\u0340": (
        "SCRAM-SHA-256$4096:tW2QDU2jFJRT2WSM7iowLg==$"
        "OCoH96WUJSsAcKfOlwDr8GjwzUwSzAvO9shvPgek2x4=:x5T4wosrMQ7Mm4DaqCrK2SrQKA04/Wi44PrMFTAci8c="
    ),
    "\ufb3e": (
        "SCRAM-SHA-256$4096:JGf5mLLPc3Kpq2RSA0VkXg==$"
        "Xv1QP9wcJnw/zozvGIoIP661ulKom1Mgp48G9g/37w4=:lmJb9fs80+Qvg+L43LhYNGAAvrVa8vilTX6A+NA97+I="
    ),
    "\ufe15\ufe0b": (
        "SCRAM-SHA-256$4096:PKstOhV5QaP0RIKcXBhUfA==$"
        "cdNth4vjeUnauIvo7YI1DjRA0BdNAzIqxJioysN6b5s=:5ieZo77ETzewkaT9EjWnz+ZCQYgMwlvilBxZcFCCArw="
    ),
    "\u06271": (
        "SCRAM-SHA-256$4096:sEYIFSWPzOh7WAEX96BBzg==$"
        "cOOBxBfDB+lAyd34jEUe0HQ/ZP1R2QRaYCo3yZfCuXY=:w81z3QCXT7cK5rhURzAyUmcYNntRdtDTx69r8kbOA04="
    ),
    "I\xadX": (
        "SCRAM-SHA-256$4096:qCmJdtSoQFc84CmLUVv37A==$"
        "7eMDc9tI2RASkws4suh91FgyYAHBvjgftrQpQP3xtH4=:Cl6s+YSHlVvugq4AiNXWk/EmsTUrMVG5hQS6uqvh/LQ="
    ),
}


@pytest.mark.parametrize("password", list(POSTGRES_SECRETS), ids=ascii)
def test_make_scram_secret_matches_postgresql(password: str) -> None:
    stored = POSTGRES_SECRETS[password]
    parsed = parse_scram_secret(stored)
    assert make_scram_secret(password, iterations=parsed.iterations, salt=parsed.salt) == stored
    # ...and so the client's proof verifies against what PostgreSQL stored.
    _exchange(ScramClient(password), ScramServer(stored))


def test_make_scram_secret_round_trips_through_postgresql_format() -> None:
    secret = make_scram_secret("pw", iterations=5000, salt=b"0123456789abcdef")
    match = PG_SECRET.fullmatch(secret)
    assert match is not None
    assert int(match["iterations"]) == 5000
    assert base64.b64decode(match["salt"]) == b"0123456789abcdef"
    parsed = parse_scram_secret(secret)
    assert parsed == ScramSecret(
        5000, b"0123456789abcdef",
        base64.b64decode(match["stored"]), base64.b64decode(match["server"]),
    )
    assert str(parsed) == secret


def test_make_scram_secret_defaults() -> None:
    first, second = make_scram_secret("pw"), make_scram_secret("pw")
    assert first != second  # fresh salt each time
    parsed = parse_scram_secret(first)
    assert parsed.iterations == 4096 and len(parsed.salt) == 16
    with pytest.raises(ValueError):
        make_scram_secret("pw", iterations=0)
    with pytest.raises(ValueError):
        make_scram_secret("pw", salt=b"")


def test_secret_repr_hides_keys() -> None:
    parsed = parse_scram_secret(POSTGRES_SECRETS["pencil"])
    assert "5KsY" not in repr(parsed) and "stored_key" not in repr(parsed)


GOOD = POSTGRES_SECRETS["pencil"]
_, _ITER_SALT, _KEYS = GOOD.split("$")
_STORED, _SERVER = _KEYS.split(":")


@pytest.mark.parametrize("secret", [
    "",
    "md5c4c4c2d1b7ac8e94e5e6e0c7e5e6e0c7",
    "pencil",
    GOOD.replace("SCRAM-SHA-256", "SCRAM-SHA-1"),
    GOOD.replace("$4096:", "$abc:"),
    GOOD.replace("$4096:", "$0:"),
    GOOD.replace("$4096:", "$-1:"),
    GOOD.replace("$4096:", "$:"),
    f"SCRAM-SHA-256$4096:$${_STORED}:{_SERVER}",
    f"SCRAM-SHA-256$4096:!!notbase64$${_STORED}:{_SERVER}",
    f"SCRAM-SHA-256${_ITER_SALT}${_STORED}",
    f"SCRAM-SHA-256${_ITER_SALT}${_STORED}:{_SERVER[:-8]}",
    f"SCRAM-SHA-256${_ITER_SALT}${_STORED}:{_SERVER}:extra",
    f"SCRAM-SHA-256${_ITER_SALT}${_STORED}:{_SERVER}$",
    GOOD + " ",
], ids=repr)
def test_malformed_secrets_raise_value_error(secret: str) -> None:
    with pytest.raises(ValueError) as failure:
        parse_scram_secret(secret)
    assert _STORED not in str(failure.value)
    with pytest.raises(ValueError):
        ScramServer(secret)


# --- Hostile and malformed messages ------------------------------------------------------


def _server() -> ScramServer:
    return ScramServer(make_scram_secret("pw", iterations=4), nonce="SERVERNONCE")


@pytest.mark.parametrize(("client_first", "message"), [
    (b"p=tls-server-end-point,,n=,r=abc", "channel binding was requested"),
    (b"n,a=admin,n=,r=abc", "authorization identity is not supported"),
    (b"n,,m=ext,n=,r=abc", "unsupported SCRAM extension"),
    (b"x,,n=,r=abc", "invalid channel binding flag"),
    (b"n,,n=,r=", "invalid client nonce"),
    (b"n,,n=,r=a,b", "invalid attribute"),
    (b"n,,r=abc", 'lacks attribute "n"'),
    (b"n,,n=", 'lacks attribute "r"'),
    (b"n,,", "invalid attribute"),
    (b"garbage", "no gs2 header"),
    (b"", "no gs2 header"),
])
def test_server_rejects_bad_client_first(client_first: bytes, message: str) -> None:
    with pytest.raises(ScramError, match=message):
        _server().server_first(client_first)


def _client_final_for(server_first: bytes, gs2: bytes = b"n,,", password: str = "pw",
                      bare: bytes = b"n=,r=abc") -> bytes:
    fields = dict(part.split(b"=", 1) for part in server_first.split(b","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(fields[b"s"]),
                                 int(fields[b"i"]))
    without_proof = b"c=" + base64.b64encode(gs2) + b",r=" + fields[b"r"]
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    auth = bare + b"," + server_first + b"," + without_proof
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return without_proof + b",p=" + base64.b64encode(proof)


def test_server_accepts_y_flag_and_checks_its_echo() -> None:
    # "y": the client supports channel binding but believes the server does not (true here).
    server = _server()
    server_first = server.server_first(b"y,,n=,r=abc")
    assert server.server_final(_client_final_for(server_first, gs2=b"y,,")).startswith(b"v=")
    # Echoing "n,," after sending "y,," is a downgrade attempt.
    server = _server()
    server_first = server.server_first(b"y,,n=,r=abc")
    with pytest.raises(ScramError, match="channel binding check failed"):
        server.server_final(_client_final_for(server_first, gs2=b"n,,"))


def test_server_ignores_the_scram_user_name() -> None:
    server = _server()
    server_first = server.server_first(b"n,,n=someone=2Celse,r=abc")
    final = _client_final_for(server_first, bare=b"n=someone=2Celse,r=abc")
    assert server.server_final(final).startswith(b"v=")


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda f: f.replace(b"c=biws", b"c=eSws"), "channel binding check failed"),
    (lambda f: f.replace(b"c=biws", b"c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws"),
     "channel binding check failed"),
    (lambda f: f.replace(b"SERVERNONCE", b"SERVERNONCF"), "nonce mismatch"),
    (lambda f: f.replace(b"r=abc", b"r=abd"), "nonce mismatch"),
    (lambda f: f.rsplit(b",p=", 1)[0], 'lacks attribute "p"'),
    (lambda f: f.rsplit(b",p=", 1)[0] + b",p=AAAA", "proof has the wrong length"),
    (lambda f: f.rsplit(b",p=", 1)[0] + b",p=!!!", "proof is not valid base64"),
    (lambda f: f.replace(b"c=biws", b"c=!!"), "channel binding is not valid base64"),
    (lambda f: f[:-6] + (b"AAAAA=" if f[-6:] != b"AAAAA=" else b"BBBBB="),
     "password authentication failed"),
    (lambda f: b"r=abcSERVERNONCE,c=biws" + f[f.index(b",p="):], 'lacks attribute "c"'),
])
def test_server_rejects_bad_client_final(mutate: Callable[[bytes], bytes], message: str) -> None:
    server = _server()
    server_first = server.server_first(b"n,,n=,r=abc")
    good = _client_final_for(server_first)
    with pytest.raises(ScramError, match=message):
        server.server_final(mutate(good))


def test_server_rejects_a_replayed_proof_on_a_new_exchange() -> None:
    first_server = _server()
    final = _client_final_for(first_server.server_first(b"n,,n=,r=abc"))
    first_server.server_final(final)
    fresh = ScramServer(make_scram_secret("pw", iterations=4))  # random server nonce
    fresh.server_first(b"n,,n=,r=abc")
    with pytest.raises(ScramError, match="nonce mismatch"):
        fresh.server_final(final)


@pytest.mark.parametrize(("server_first", "message"), [
    (b"r=xyz123,s=QUJD,i=4096", "nonce mismatch"),
    (b"r=abc,s=QUJD,i=4096", "nonce mismatch"),  # no server part
    (b"r=abcdef,s=QUJD,i=0", "invalid iteration count"),
    (b"r=abcdef,s=QUJD,i=-1", "invalid iteration count"),
    (b"r=abcdef,s=QUJD,i=lots", "invalid iteration count"),
    (b"r=abcdef,s=QUJD,i=4294967296", "invalid iteration count"),
    (b"r=abcdef,s=,i=4096", "empty salt"),
    (b"r=abcdef,s=@@@,i=4096", "salt is not valid base64"),
    (b"r=abcdef,i=4096", 'lacks attribute "s"'),
    (b"r=abcdef,s=QUJD", 'lacks attribute "i"'),
    (b"m=ext,r=abcdef,s=QUJD,i=4096", "unsupported SCRAM extension"),
    (b"e=other-error", 'lacks attribute "r"'),
    (b"", "invalid attribute"),
])
def test_client_rejects_bad_server_first(server_first: bytes, message: str) -> None:
    client = ScramClient("pw", nonce="abc")
    client.client_first()
    with pytest.raises(ScramError, match=message):
        client.client_final(server_first)


def test_client_accepts_server_first_extensions() -> None:
    client = ScramClient("pw", nonce="abc")
    client.client_first()
    assert client.client_final(b"r=abcdef,s=QUJD,i=1,x=future").startswith(b"c=biws,r=abcdef,p=")


@pytest.mark.parametrize(("server_final", "message"), [
    (b"v=!!!", "server signature is not valid base64"),
    (b"x=1", 'lacks attribute "v"'),
    (b"e=invalid-encoding", "server rejected SCRAM authentication: invalid-encoding"),
    (b"", "invalid attribute"),
])
def test_client_rejects_bad_server_final(server_final: bytes, message: str) -> None:
    client = ScramClient("pw", nonce="abc")
    client.client_first()
    client.client_final(b"r=abcdef,s=QUJD,i=1")
    with pytest.raises(ScramError, match=message):
        client.verify_server_final(server_final)


def test_invalid_nonce_arguments() -> None:
    with pytest.raises(ValueError):
        ScramClient("pw", nonce="has,comma")
    with pytest.raises(ValueError):
        ScramServer(make_scram_secret("pw"), nonce="")


# --- SASLprep --------------------------------------------------------------------------------


@pytest.mark.parametrize(("password", "prepared"), [
    ("user", b"user"),  # RFC 4013 section 3 examples
    ("USER", b"USER"),
    ("I\u00adX", b"IX"),
    ("\u00aa", b"a"),
    ("\u2168", b"IX"),
    ("\u00a0a\u3000", b" a "),
    ("x\u200by", b"x y"),  # in both tables; PostgreSQL maps it to a space
    ("caf\u0065\u0301", "caf\u00e9".encode()),
    ("\u0007", b"\x07"),  # ASCII passes unchanged in PostgreSQL, controls too
    ("a\u0007\u00e9", "a\u0007\u00e9".encode()),  # prohibited: raw bytes
    ("\u0627\u0031", "\u0627\u0031".encode()),  # bidi violation: raw bytes
    ("\u0627\u0031\u0628", "\u0627\u0031\u0628".encode()),
    ("\u00ad", "\u00ad".encode()),  # maps to nothing: raw bytes
    ("bad\udcff", b"bad\xff"),  # undecodable byte carried by surrogateescape
])
def test_saslprep(password: str, prepared: bytes) -> None:
    assert saslprep(password) == prepared


# --- MD5 -------------------------------------------------------------------------------------


def test_md5_password_known_answer() -> None:
    # b"md5" + hex(md5(hex(md5(password + user)) + salt)), worked through by hand:
    salt = b"\x01\x02\x03\x04"
    inner = hashlib.md5(b"md5pw" + b"md5r").hexdigest()
    assert inner == "ca4bd097280a0faf6406d44e48ff7507"  # what pg_authid stores, minus "md5"
    by_hand = b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()
    assert by_hand == b"md57986d7ad33108c3982474ccf138684f7"
    assert md5_password("md5r", "md5pw", salt) == by_hand
    assert len(md5_password("u", "p", b"salt")) == 35


# --- Real clients against ScramServer ------------------------------------------------------


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _auth(code: int, data: bytes = b"") -> bytes:
    return _message(b"R", struct.pack("!I", code) + data)


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    header = await reader.readexactly(5)
    (length,) = struct.unpack("!I", header[1:])
    return header[:1], await reader.readexactly(length - 4)


async def _scram_only_server(secret: str, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
    """Just enough of a PostgreSQL server to run SCRAM-SHA-256 and say ReadyForQuery."""
    try:
        while True:
            (length,) = struct.unpack("!I", await reader.readexactly(4))
            startup = await reader.readexactly(length - 4)
            if struct.unpack("!I", startup[:4])[0] in (80877103, 80877104):  # SSL / GSSENC
                writer.write(b"N")
                continue
            break
        writer.write(_auth(10, b"SCRAM-SHA-256\0\0"))
        _, body = await _read_message(reader)
        mechanism, _, rest = body.partition(b"\0")
        assert mechanism == b"SCRAM-SHA-256"
        server = ScramServer(secret)
        try:
            writer.write(_auth(11, server.server_first(rest[4:])))
            _, client_final = await _read_message(reader)
            server_final = server.server_final(client_final)
        except ScramError as exc:
            fields = b"SFATAL\0VFATAL\0C28P01\0M" + str(exc).encode() + b"\0\0"
            writer.write(_message(b"E", fields))
            return
        writer.write(_auth(12, server_final) + _auth(0))
        for name, value in [("server_version", "15.0"), ("client_encoding", "UTF8"),
                            ("server_encoding", "UTF8"), ("DateStyle", "ISO, MDY"),
                            ("integer_datetimes", "on"), ("standard_conforming_strings", "on"),
                            ("TimeZone", "UTC")]:
            writer.write(_message(b"S", f"{name}\0{value}\0".encode()))
        writer.write(_message(b"K", struct.pack("!II", 1, 2)) + _message(b"Z", b"I"))
        await writer.drain()
        while (await _read_message(reader))[0] != b"X":  # until the client's Terminate
            pass
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def scram_port() -> AsyncIterator[int]:
    secret = make_scram_secret("pässwörd\u00ad")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _scram_only_server(secret, reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.mark.timeout(20)
async def test_asyncpg_logs_in_against_scram_server(scram_port: int) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=scram_port, user="agent",
                                 password="pässwörd", database="app", ssl=False)
    await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError, match="password authentication failed"):
        await asyncpg.connect(host="127.0.0.1", port=scram_port, user="agent",
                              password="wrong", database="app", ssl=False)


@pytest.mark.timeout(20)
async def test_libpq_logs_in_against_scram_server(scram_port: int) -> None:
    conninfo = f"host=127.0.0.1 port={scram_port} user=agent dbname=app sslmode=disable"
    conn = await psycopg.AsyncConnection.connect(conninfo, password="pässwörd")
    await conn.close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        await psycopg.AsyncConnection.connect(conninfo, password="wrong")


def test_scram_module_does_not_import_asyncio() -> None:
    code = "import sys, pgproxy.wire.scram; sys.exit('asyncio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- A real PostgreSQL ---------------------------------------------------------------------


def test_postgresql_accepts_make_scram_secret(pg: PostgresCluster) -> None:
    """A role whose password is our secret logs in with the plaintext through libpq."""
    password = "pässwörd\u00ad-\u2168"  # SASLprep maps the soft hyphen away and Ⅸ to IX
    with psycopg.connect(pg.dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP ROLE IF EXISTS scram_secret_check"))
        admin.execute(sql.SQL("CREATE ROLE scram_secret_check LOGIN PASSWORD {}").format(
            make_scram_secret(password, iterations=4097)))
        stored = admin.execute("SELECT rolpassword FROM pg_authid "
                               "WHERE rolname = 'scram_secret_check'").fetchone()
    assert stored is not None and parse_scram_secret(stored[0]).iterations == 4097
    for typed in (password, "pässwörd-IX"):  # as typed, and already SASLprep'ed
        with psycopg.connect(pg.dsn(user="scram_secret_check", password=typed)) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("scram_secret_check",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg.dsn(user="scram_secret_check", password="pässwörd"))


def test_make_scram_secret_matches_what_postgresql_stores(pg: PostgresCluster) -> None:
    passwords = ["plain", "pässwörd", "x\u200by", "\u0340", "\ufb3e", "\ufe15\ufe0b",
                 "\u0627\u0031", "\u0627\u0031\u0628", "\u00a0sp\u00a0", "ﬁ\u0301", "日本語"]
    with psycopg.connect(pg.dsn(), autocommit=True) as admin:
        admin.execute("SET password_encryption = 'scram-sha-256'")
        admin.execute("DROP ROLE IF EXISTS scram_prep_check")
        admin.execute("CREATE ROLE scram_prep_check")
        for password in passwords:
            admin.execute(sql.SQL("ALTER ROLE scram_prep_check PASSWORD {}").format(password))
            row = admin.execute("SELECT rolpassword FROM pg_authid "
                                "WHERE rolname = 'scram_prep_check'").fetchone()
            assert row is not None
            stored = parse_scram_secret(row[0])
            mine = make_scram_secret(password, iterations=stored.iterations, salt=stored.salt)
            assert mine == row[0], ascii(password)
        admin.execute("DROP ROLE scram_prep_check")
