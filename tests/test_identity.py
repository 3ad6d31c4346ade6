"""Who the agent is: JWTs (HS256, RS256/ES256 PEM keys, a real local JWKS endpoint)
and static SCRAM agents. Every refusal is an AuthFailed that says what is wrong
and never repeats the token, the secret or a key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from pgproxy.config import AuthConfig, JwtConfig, StaticAgent
from pgproxy.errors import AuthFailed, IdentityRefused, SqlState
from pgproxy.identity import Authenticator, Identity
from pgproxy.names import canonical, in_any, invisible, same
from pgproxy.pgcluster import free_port
from pgproxy.wire.scram import ScramClient, ScramError, make_scram_secret

SECRET = "identity-test-secret-0123456789abcdef"
ISSUER = "https://issuer.test"
AUDIENCE = "pgproxy"
HS256 = JwtConfig(algorithms=("HS256",), secret=SECRET, issuer=ISSUER, audience=AUDIENCE)
STATIC = StaticAgent("batch", make_scram_secret("batch-pw", iterations=64), frozenset({"etl"}))


def claims(sub: Any = "agent", *, ttl: float = 600, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    payload: dict[str, Any] = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now,
                               "exp": now + int(ttl), "groups": ["readers", "etl"]}
    payload.update(extra)
    return {name: value for name, value in payload.items() if value is not None}


def hs_token(payload: dict[str, Any] | None = None, *, secret: str = SECRET,
             algorithm: str = "HS256", headers: dict[str, Any] | None = None) -> str:
    return jwt.encode(payload if payload is not None else claims(), secret,
                      algorithm=algorithm, headers=headers)


def unsigned_token(payload: dict[str, Any], alg: str = "none") -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part({'alg': alg, 'typ': 'JWT'})}.{part(payload)}."


def authenticator(config: JwtConfig | None = HS256, *,
                  agents: tuple[StaticAgent, ...] = (STATIC,)) -> Authenticator:
    return Authenticator(AuthConfig(jwt=config, agents=agents))


async def refused(auth: Authenticator, token: str, user: str = "agent",
                  *secrets: str) -> str:
    """The AuthFailed message, checked to name neither the token nor any secret."""
    with pytest.raises(AuthFailed) as failure:
        await auth.verify_jwt(token, user)
    error = failure.value
    assert error.sqlstate == SqlState.INVALID_PASSWORD
    assert error.message.startswith(f'JWT authentication failed for user "{user}": ')
    for secret in (token, SECRET, *secrets):
        if secret:
            assert secret not in error.message
            assert secret not in repr(error)
    return error.message.split(": ", 1)[1]


# --- HS256 -------------------------------------------------------------------------------------


async def test_valid_hs256_token() -> None:
    identity = await authenticator().verify_jwt(hs_token(), "agent")
    assert identity == Identity("agent", frozenset({"readers", "etl"}), "jwt")


async def test_expired_token() -> None:
    assert await refused(authenticator(), hs_token(claims(ttl=-120))) == "token has expired"


async def test_leeway_applies_to_expiry_and_not_before() -> None:
    auth = authenticator(replace(HS256, leeway_seconds=30))
    assert (await auth.verify_jwt(hs_token(claims(ttl=-10)), "agent")).agent_id == "agent"
    now = int(time.time())
    assert (await auth.verify_jwt(hs_token(claims(nbf=now + 10)), "agent")).agent_id == "agent"
    strict = authenticator(replace(HS256, leeway_seconds=0))
    assert await refused(strict, hs_token(claims(ttl=-10))) == "token has expired"


async def test_not_yet_valid_token() -> None:
    token = hs_token(claims(nbf=int(time.time()) + 600))
    assert await refused(authenticator(), token) == "token is not yet valid"


async def test_wrong_secret() -> None:
    other = "another-secret-of-sufficient-length-42"
    assert await refused(authenticator(), hs_token(secret=other), "agent", other) \
        == "invalid signature"


async def test_issuer() -> None:
    assert await refused(authenticator(), hs_token(claims(iss="https://evil.test"))) \
        == "wrong issuer"
    assert await refused(authenticator(), hs_token(claims(iss=None))) == 'claim "iss" missing'
    no_issuer = authenticator(replace(HS256, issuer=None))
    assert await no_issuer.verify_jwt(hs_token(claims(iss="https://any.test")), "agent")


async def test_audience() -> None:
    assert await refused(authenticator(), hs_token(claims(aud="someone-else"))) \
        == "wrong audience"
    assert await refused(authenticator(), hs_token(claims(aud=None))) == 'claim "aud" missing'
    listed = hs_token(claims(aud=["other", AUDIENCE]))
    assert (await authenticator().verify_jwt(listed, "agent")).agent_id == "agent"
    # Without a configured audience the claim is not checked.
    no_audience = authenticator(replace(HS256, audience=None))
    assert await no_audience.verify_jwt(hs_token(claims(aud="anything")), "agent")


async def test_missing_claims() -> None:
    assert await refused(authenticator(), hs_token(claims(exp=None))) == 'claim "exp" missing'
    assert await refused(authenticator(), hs_token(claims(sub=None))) == 'claim "sub" missing'
    assert await refused(authenticator(), hs_token(claims(sub=""))) \
        == 'claim "sub" must be a non-empty string'
    assert await refused(authenticator(), hs_token(claims(sub=42))) \
        == 'claim "sub" must be a string'
    assert await refused(authenticator(), hs_token(claims(exp="soon"))) == "token is malformed"
    # PyJWT reads a string of digits as a time; a time is a number.
    assert await refused(authenticator(), hs_token(claims(exp="99999999999"))) == 'claim "exp" must be a number'
    assert await refused(authenticator(), hs_token(claims(iat=True))) == 'claim "iat" must be a number'


async def test_configured_agent_claim() -> None:
    auth = authenticator(replace(HS256, agent_claim="agent_id"))
    identity = await auth.verify_jwt(hs_token(claims(sub="svc-123", agent_id="agent")), "agent")
    assert identity.agent_id == "agent"
    assert await refused(auth, hs_token(claims())) == 'claim "agent_id" missing'
    assert await refused(auth, hs_token(claims(agent_id=["agent"]))) \
        == 'claim "agent_id" must be a non-empty string'


async def test_user_must_match_agent() -> None:
    token = hs_token(claims(sub="other-agent"))
    assert await refused(authenticator(), token, "agent") == 'token is for agent "other-agent"'
    relaxed = authenticator(replace(HS256, require_user_match=False))
    identity = await relaxed.verify_jwt(token, "agent")
    assert identity.agent_id == "other-agent"


@pytest.mark.parametrize("algorithms", [("HS256",), ("HS256", "none"), ("none",)])
async def test_alg_none_is_always_rejected(algorithms: tuple[str, ...]) -> None:
    auth = authenticator(replace(HS256, algorithms=algorithms))
    for alg in ("none", "None", "NONE"):
        assert await refused(auth, unsigned_token(claims(), alg)) \
            == f"algorithm {alg} is not accepted"


async def test_algorithms_outside_the_configured_list() -> None:
    strong = "a-much-longer-secret-for-hs384-0123456789abcdef0123"
    token = hs_token(algorithm="HS384", secret=strong)
    assert await refused(authenticator(), token, "agent", strong) \
        == "algorithm HS384 is not accepted"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert await refused(authenticator(), jwt.encode(claims(), key, algorithm="RS256")) \
        == "algorithm RS256 is not accepted"
    assert await refused(authenticator(), unsigned_token(claims(), alg="")) \
        == "algorithm  is not accepted"
    no_alg = unsigned_token(claims()).replace(
        unsigned_token(claims()).split(".")[0],
        base64.urlsafe_b64encode(b'{"typ":"JWT"}').rstrip(b"=").decode())
    assert await refused(authenticator(), no_alg) == "token names no algorithm"


@pytest.mark.parametrize("token", [
    "", "not-a-token", "a.b.c", "a.b", "....", "Bearer xyz", "é.é.é",
    "eyJhbGciOiJIUzI1NiJ9.%%%.sig", base64.b64encode(b"\xff" * 30).decode(),
])
async def test_garbage_tokens(token: str) -> None:
    assert await refused(authenticator(), token) == "token is not a JWT"


async def test_oversized_token() -> None:
    token = hs_token(claims(padding="x" * 70_000))
    assert await refused(authenticator(), token) == "token is too long"


async def test_bad_groups_claim() -> None:
    assert await refused(authenticator(), hs_token(claims(groups=7))) \
        == 'claim "groups" must be a list of strings or a space-separated string'
    assert await refused(authenticator(), hs_token(claims(groups=["ok", 3]))) \
        == 'claim "groups" must be a list of strings or a space-separated string'


@pytest.mark.parametrize(("groups", "expected"), [
    (["readers", "etl"], {"readers", "etl"}),
    ("readers  etl\tops", {"readers", "etl", "ops"}),
    ("", set()),
    ([], set()),
    (None, set()),
])
async def test_groups(groups: Any, expected: set[str]) -> None:
    identity = await authenticator().verify_jwt(hs_token(claims(groups=groups)), "agent")
    assert identity.groups == frozenset(expected)


async def test_configured_groups_claim() -> None:
    auth = authenticator(replace(HS256, groups_claim="roles"))
    identity = await auth.verify_jwt(hs_token(claims(roles="a b")), "agent")
    assert identity.groups == frozenset({"a", "b"})


async def test_jwt_not_configured() -> None:
    auth = authenticator(None)
    assert await refused(auth, hs_token()) == "JWT authentication is not configured"


async def test_user_name_in_message_is_made_printable() -> None:
    with pytest.raises(AuthFailed) as failure:
        await authenticator().verify_jwt("x", "bad\nuser")
    assert "\n" not in failure.value.message


@pytest.mark.parametrize("sub", ["agent\u200b", "\u200dagent", "age\u202ent", "agent\u2066", "agent\x00",
                                 "agent\u00ad", "agent\ufe0f", "agent\u3164", "agent\u2028", "agent\ue000"])
async def test_a_subject_with_an_invisible_character_is_no_identity(sub: str) -> None:
    """A name that looks like another one to a person is refused, whatever signed it."""
    with pytest.raises(IdentityRefused) as failure:
        await authenticator(replace(HS256, require_user_match=False)).verify_jwt(hs_token(claims(sub=sub)), "agent")
    assert failure.value.sqlstate == SqlState.INVALID_AUTHORIZATION
    hidden = next(c for c in sub if c not in "agent")
    assert failure.value.message == ('JWT authentication failed for user "agent": claim "sub" contains an '
                                     f"invisible or control character (U+{ord(hidden):04X})")


@pytest.mark.parametrize(("first", "second"), [
    ("alice", "ALICE"), ("alice", "Alice"), ("alice", "\uff41\uff4c\uff49\uff43\uff45"),  # fullwidth
    ("strasse", "STRASSE"), ("straße", "STRASSE"), ("é", "e\u0301"), ("ǅ", "dž"), ("ﬁ", "fi"),
])
def test_names_are_compared_in_one_canonical_form(first: str, second: str) -> None:
    assert same(first, second) and canonical(first) == canonical(second)
    assert in_any([second.upper()], [first])


@pytest.mark.parametrize(("first", "second"), [("alice", "alice2"), ("alice", "al ice"), ("agent", "agent\u200b")])
def test_different_names_stay_different(first: str, second: str) -> None:
    assert not same(first, second)


def test_visible_names_pass() -> None:
    for name in ("alice", "Zoë", "山田", "o'brien", "svc-etl@corp.example", "\u02bbokina"):
        assert invisible(name) is None, name


# --- RS256 / ES256 with PEM public keys ---------------------------------------------------


@dataclass(frozen=True)
class Keys:
    rsa_key: rsa.RSAPrivateKey
    rsa_other: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    ec_other: ec.EllipticCurvePrivateKey

    @staticmethod
    def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
        data = key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        return data.decode()

    @staticmethod
    def private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
        return data.decode()


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        rsa_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa_other=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec_key=ec.generate_private_key(ec.SECP256R1()),
        ec_other=ec.generate_private_key(ec.SECP256R1()),
    )


def pem_config(public_key: str, *algorithms: str) -> JwtConfig:
    return JwtConfig(algorithms=algorithms, public_key=public_key, issuer=ISSUER,
                     audience=AUDIENCE)


async def test_rs256_with_public_key(keys: Keys) -> None:
    auth = authenticator(pem_config(Keys.pem(keys.rsa_key), "RS256"))
    identity = await auth.verify_jwt(jwt.encode(claims(), keys.rsa_key, algorithm="RS256"), "agent")
    assert identity == Identity("agent", frozenset({"readers", "etl"}), "jwt")
    forged = jwt.encode(claims(), keys.rsa_other, algorithm="RS256")
    assert await refused(auth, forged, "agent", Keys.pem(keys.rsa_key)) == "invalid signature"
    expired = jwt.encode(claims(ttl=-300), keys.rsa_key, algorithm="RS256")
    assert await refused(auth, expired) == "token has expired"


async def test_es256_with_public_key(keys: Keys) -> None:
    auth = authenticator(pem_config(Keys.pem(keys.ec_key), "ES256"))
    identity = await auth.verify_jwt(jwt.encode(claims(), keys.ec_key, algorithm="ES256"), "agent")
    assert identity.agent_id == "agent"
    forged = jwt.encode(claims(), keys.ec_other, algorithm="ES256")
    assert await refused(auth, forged, "agent", Keys.pem(keys.ec_key)) == "invalid signature"


async def test_key_of_the_wrong_type(keys: Keys) -> None:
    auth = authenticator(pem_config(Keys.pem(keys.rsa_key), "RS256", "ES256"))
    token = jwt.encode(claims(), keys.ec_key, algorithm="ES256")
    assert await refused(auth, token, "agent", Keys.pem(keys.rsa_key)) \
        == "no usable key for algorithm ES256"


async def test_public_key_is_never_an_hmac_secret(keys: Keys) -> None:
    # Algorithm confusion: an HS256 token "signed" with the (public) PEM key.
    public_pem = Keys.pem(keys.rsa_key)
    forged = unsigned_token(claims(), "HS256")[:-1]
    signing_input = forged.encode()
    signature = hmac.digest(public_pem.encode(), signing_input, hashlib.sha256)
    forged += "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
    only_pem = authenticator(pem_config(public_pem, "RS256", "HS256"))
    assert await refused(only_pem, forged) == "algorithm HS256 is not accepted"
    both = authenticator(replace(pem_config(public_pem, "RS256", "HS256"), secret=SECRET))
    assert await refused(both, forged) == "invalid signature"
    assert (await both.verify_jwt(hs_token(), "agent")).agent_id == "agent"


async def test_private_key_never_in_messages(keys: Keys) -> None:
    auth = authenticator(pem_config(Keys.pem(keys.rsa_key), "RS256"))
    token = jwt.encode(claims(sub="x"), keys.rsa_key, algorithm="RS256")
    message = await refused(auth, token, "agent", Keys.private_pem(keys.rsa_key))
    assert message == 'token is for agent "x"'


# --- JWKS from a real local web server ----------------------------------------------------


@dataclass
class Jwks:
    url: str
    document: dict[str, Any]
    requests: int = 0
    status: int = 200
    headers_seen: list[str] = field(default_factory=list)


def jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        entry = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        entry = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**entry, "kid": kid, "use": "sig"}


@pytest.fixture
async def jwks(keys: Keys) -> AsyncIterator[Jwks]:
    state = Jwks(url="", document={"keys": [jwk(keys.rsa_key, "rsa-1"), jwk(keys.ec_key, "ec-1")]})

    async def serve(request: web.Request) -> web.Response:
        state.requests += 1
        if state.status != 200:
            return web.Response(status=state.status, text="unavailable")
        return web.json_response(state.document)

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.url = f"http://{host}:{port}/.well-known/jwks.json"
    try:
        yield state
    finally:
        await runner.cleanup()


def jwks_config(url: str, *algorithms: str) -> JwtConfig:
    return JwtConfig(algorithms=algorithms or ("RS256", "ES256"), jwks_url=url, issuer=ISSUER,
                     audience=AUDIENCE)


async def test_jwks_valid_tokens_and_key_caching(keys: Keys, jwks: Jwks) -> None:
    auth = authenticator(jwks_config(jwks.url))
    rs = jwt.encode(claims(), keys.rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    es = jwt.encode(claims(), keys.ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    assert (await auth.verify_jwt(rs, "agent")).agent_id == "agent"
    assert (await auth.verify_jwt(es, "agent")).agent_id == "agent"
    assert (await auth.verify_jwt(rs, "agent")).agent_id == "agent"
    assert jwks.requests == 1  # one PyJWKClient per Authenticator: the key set is cached


async def test_jwks_unknown_kid(keys: Keys, jwks: Jwks) -> None:
    auth = authenticator(jwks_config(jwks.url))
    token = jwt.encode(claims(), keys.rsa_other, algorithm="RS256", headers={"kid": "rotated"})
    assert await refused(auth, token) == 'no signing key with key id "rotated"'


async def test_jwks_wrong_key_for_kid(keys: Keys, jwks: Jwks) -> None:
    auth = authenticator(jwks_config(jwks.url))
    forged = jwt.encode(claims(), keys.rsa_other, algorithm="RS256", headers={"kid": "rsa-1"})
    assert await refused(auth, forged) == "invalid signature"
    # The key's algorithm decides, not the token's header.
    mixed = jwt.encode(claims(), keys.ec_key, algorithm="ES256", headers={"kid": "rsa-1"})
    assert await refused(auth, mixed) == "algorithm ES256 is not accepted"


async def test_jwks_token_without_kid(keys: Keys, jwks: Jwks) -> None:
    auth = authenticator(jwks_config(jwks.url))
    token = jwt.encode(claims(), keys.rsa_key, algorithm="RS256")
    assert await refused(auth, token) == "token has no key id (kid)"
    # With a PEM key configured too, a token without kid is checked against the PEM key.
    both = authenticator(replace(jwks_config(jwks.url), public_key=Keys.pem(keys.rsa_key)))
    assert (await both.verify_jwt(token, "agent")).agent_id == "agent"


async def test_jwks_never_supplies_hmac_keys(jwks: Jwks) -> None:
    # A JWKS is public: a symmetric key published in it must not verify anything.
    jwks.document = {"keys": [{"kty": "oct", "kid": "oct-1", "alg": "HS256", "use": "sig",
                               "k": base64.urlsafe_b64encode(SECRET.encode()).decode()}]}
    auth = authenticator(jwks_config(jwks.url, "HS256", "RS256"))
    token = hs_token(headers={"kid": "oct-1"})
    assert await refused(auth, token) == "algorithm HS256 is not accepted"
    assert jwks.requests == 0


async def test_jwks_unreachable(keys: Keys) -> None:
    url = f"http://127.0.0.1:{free_port()}/jwks.json?access_token=url-secret-123"
    auth = authenticator(jwks_config(url))
    token = jwt.encode(claims(), keys.rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    message = await refused(auth, token, "agent", "url-secret-123")
    assert message == "could not fetch signing keys"
    assert "127.0.0.1" not in message


@pytest.mark.parametrize("document", [None, {"keys": []}, {"nope": 1}, ["not", "an", "object"]])
async def test_jwks_unusable_responses(keys: Keys, jwks: Jwks, document: Any) -> None:
    if document is None:
        jwks.status = 503
    else:
        jwks.document = document
    auth = authenticator(jwks_config(jwks.url))
    token = jwt.encode(claims(), keys.rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert await refused(auth, token) == "could not fetch signing keys"


def test_jwks_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        authenticator(jwks_config("file:///etc/passwd"))


# --- Static SCRAM agents ------------------------------------------------------------------


def test_method_for() -> None:
    auth = authenticator()
    assert auth.method_for("batch") == "scram"
    assert auth.method_for("agent") == "jwt"
    assert auth.method_for("anyone") == "jwt"


def test_unknown_agent_without_jwt() -> None:
    auth = authenticator(None)
    assert auth.method_for("batch") == "scram"
    with pytest.raises(AuthFailed) as failure:
        auth.method_for("nobody")
    assert failure.value.sqlstate == SqlState.INVALID_AUTHORIZATION
    assert failure.value.message == 'unknown agent "nobody"'


def test_static_agent_scram_exchange() -> None:
    auth = authenticator()
    server = auth.scram_server("batch")
    client = ScramClient("batch-pw")
    server_first = server.server_first(client.client_first())
    client.verify_server_final(server.server_final(client.client_final(server_first)))
    assert auth.static_identity("batch") == Identity("batch", frozenset({"etl"}), "scram")


def test_static_agent_wrong_password() -> None:
    server = authenticator().scram_server("batch")
    client = ScramClient("not-the-password")
    server_first = server.server_first(client.client_first())
    with pytest.raises(ScramError) as failure:
        server.server_final(client.client_final(server_first))
    assert str(failure.value) == "password authentication failed"
    assert "batch-pw" not in str(failure.value)


def test_each_scram_exchange_is_fresh() -> None:
    auth = authenticator()
    first = auth.scram_server("batch").server_first(b"n,,n=,r=abc")
    second = auth.scram_server("batch").server_first(b"n,,n=,r=abc")
    assert first != second


def test_scram_for_non_static_agents() -> None:
    auth = authenticator()
    for call in (auth.scram_server, auth.static_identity):
        with pytest.raises(AuthFailed) as failure:
            call("agent")
        assert failure.value.sqlstate == SqlState.INVALID_AUTHORIZATION


def test_bad_static_secret_is_a_config_error() -> None:
    broken = StaticAgent("broken", "SCRAM-SHA-256$4096:c2FsdA==$not-keys")
    with pytest.raises(ValueError, match='"broken"'):
        authenticator(agents=(broken,))
