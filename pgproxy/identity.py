"""Who the agent is: a JWT sent as the password, or a static agent's SCRAM secret.

The session asks :meth:`Authenticator.method_for` which exchange to run for the
startup user. Static agents (``auth.agents`` in the config) log in with
SCRAM-SHA-256 against their stored secret (:meth:`Authenticator.scram_server`);
everyone else sends a JWT as the password, verified by
:meth:`Authenticator.verify_jwt` with PyJWT against the configured HMAC secret,
PEM public key or the issuer's JWKS.

Every failure is an :class:`~pgproxy.errors.AuthFailed` whose message says what
is wrong in PostgreSQL's style (``JWT authentication failed for user "agent":
token has expired``) and never contains the token, a secret or a key.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import jwt
from jwt.exceptions import InvalidSubjectError
from jwt.types import Options

from pgproxy.config import AuthConfig, JwtConfig, StaticAgent
from pgproxy.errors import AuthFailed, IdentityRefused, SqlState
from pgproxy.names import invisible
from pgproxy.wire.scram import ScramSecret, ScramServer, parse_scram_secret

__all__ = ["Authenticator", "Identity"]

log = logging.getLogger(__name__)

_JWKS_TIMEOUT_SECONDS = 10.0  # one blocking fetch; the session's auth timeout bounds the rest
_MAX_TOKEN_CHARS = 64 * 1024  # far above any real JWT; bounds the work a junk password causes
_SHOWN_CHARS = 64  # longest token-supplied value (alg, kid, agent id) echoed in a message


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated agent: what the policy and the audit log know it by."""

    agent_id: str
    groups: frozenset[str]
    method: str  # "jwt" or "scram"


# Three dot-separated runs of base64url characters. A match may start only where a run starts
# (the look-behind): a match inside a run extends to its start, and without this every position
# of a long run would be tried, which made one 10 KB user name cost a second of CPU.
_TOKEN_LIKE = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")


def shown_name(value: str) -> str:
    """A name a client sent (its user name) as logs, audit events and errors may show it: a name
    that looks like a token (an agent that put its JWT in the user name) is never written out."""
    if _TOKEN_LIKE.search(value):
        return "<redacted: looks like a token>"
    return value


def _show(value: object) -> str:
    """A token-supplied value made safe to quote in an error message."""
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    text = "".join(c if c.isprintable() else "?" for c in shown_name(value))
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


class Authenticator:
    """Decides how an agent authenticates and verifies what it sends.

    One per proxy: it keeps the parsed static secrets and a single
    ``PyJWKClient`` so that JWKS keys are fetched once and cached.
    """

    def __init__(self, auth: AuthConfig) -> None:
        self._auth = auth
        self._agents: dict[str, StaticAgent] = {agent.id: agent for agent in auth.agents}
        self._secrets: dict[str, ScramSecret] = {}
        for agent in auth.agents:
            try:
                self._secrets[agent.id] = parse_scram_secret(agent.scram_secret)
            except ValueError as exc:
                raise ValueError(f'auth.agents "{agent.id}": {exc}') from None
        self._jwks: jwt.PyJWKClient | None = None
        if auth.jwt is not None and auth.jwt.jwks_url is not None:
            try:
                self._jwks = jwt.PyJWKClient(auth.jwt.jwks_url, timeout=_JWKS_TIMEOUT_SECONDS)
            except jwt.PyJWKClientError:
                raise ValueError("auth.jwt.jwks_url must be an http:// or https:// URL") from None

    # --- choosing the exchange -----------------------------------------------------------

    def method_for(self, user: str) -> str:
        """``"scram"`` for a static agent, else ``"jwt"`` when JWT is configured.

        Raises AuthFailed (28000) for a user that can authenticate neither way.
        """
        if user in self._agents:
            return "scram"
        if self._auth.jwt is not None:
            return "jwt"
        raise self._unknown(user)

    def scram_server(self, user: str) -> ScramServer:
        """A fresh SCRAM-SHA-256 server exchange for static agent `user`."""
        secret = self._secrets.get(user)
        if secret is None:
            raise self._unknown(user)
        return ScramServer(secret)

    def static_identity(self, user: str) -> Identity:
        """The identity of static agent `user`, once its SCRAM exchange succeeded."""
        agent = self._agents.get(user)
        if agent is None:
            raise self._unknown(user)
        return Identity(agent_id=agent.id, groups=frozenset(agent.groups), method="scram")

    @staticmethod
    def _unknown(user: str) -> AuthFailed:
        return AuthFailed(f'unknown agent "{_show(user)}"', sqlstate=SqlState.INVALID_AUTHORIZATION)

    # --- JWT -----------------------------------------------------------------------------

    async def verify_jwt(self, token: str, user: str) -> Identity:
        """Verify `token` (the agent's password) and return who it names.

        Checks the signature with the key for the token's algorithm (which must
        be one of the configured ones, never "none"), requires ``exp``, checks
        ``nbf``/``iat`` and, when configured, ``iss`` and ``aud``, all with the
        configured leeway. When ``require_user_match`` is set the startup user
        must be the agent id the token names.
        """
        def fail(reason: str) -> NoReturn:
            raise AuthFailed(f'JWT authentication failed for user "{_show(user)}": {reason}')

        config = self._auth.jwt
        if config is None:
            fail("JWT authentication is not configured")
        if len(token) > _MAX_TOKEN_CHARS:
            fail("token is too long")
        if not token.isascii():
            fail("token is not a JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            fail("token is not a JWT")
        except jwt.PyJWTError:
            fail("token header is invalid")

        alg = header.get("alg")
        if alg is None:
            fail("token names no algorithm")
        if not isinstance(alg, str) or alg.lower() == "none" or alg not in config.algorithms:
            fail(f"algorithm {_show(alg)} is not accepted")
        key = await self._key_for(config, alg, header, token, fail)

        options: Options = {
            "require": ["exp"],
            "verify_iss": config.issuer is not None,
            "verify_aud": config.audience is not None,
        }
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                options=options,
                issuer=config.issuer,
                audience=config.audience,
                leeway=config.leeway_seconds,
            )
        except jwt.InvalidSignatureError:
            fail("invalid signature")
        except jwt.ExpiredSignatureError:
            fail("token has expired")
        except jwt.ImmatureSignatureError:
            fail("token is not yet valid")
        except jwt.InvalidIssuerError:
            fail("wrong issuer")
        except jwt.InvalidAudienceError:
            fail("wrong audience")
        except jwt.MissingRequiredClaimError as exc:
            fail(f'claim "{_show(exc.claim)}" missing')
        except jwt.InvalidIssuedAtError:
            fail('claim "iat" must be a number')
        except InvalidSubjectError:
            fail('claim "sub" must be a string')
        except jwt.InvalidAlgorithmError:
            fail(f"algorithm {_show(alg)} is not accepted")
        except jwt.InvalidKeyError:
            # The configured key does not fit this algorithm (e.g. an RSA key for ES256).
            fail(f"no usable key for algorithm {_show(alg)}")
        except jwt.DecodeError:
            fail("token is malformed")
        except jwt.PyJWTError:
            fail("token is invalid")

        for name in ("exp", "nbf", "iat"):  # PyJWT takes "99999999999" (a string) for a time
            if name in claims and (isinstance(claims[name], bool) or not isinstance(claims[name], int | float)):
                fail(f'claim "{name}" must be a number')
        agent_id = claims.get(config.agent_claim)
        if agent_id is None:
            fail(f'claim "{_show(config.agent_claim)}" missing')
        if not isinstance(agent_id, str) or not agent_id:
            fail(f'claim "{_show(config.agent_claim)}" must be a non-empty string')
        hidden = invisible(agent_id)
        if hidden is not None:
            raise IdentityRefused(f'JWT authentication failed for user "{_show(user)}": claim "'
                                  f'{_show(config.agent_claim)}" contains an invisible or control character ({hidden})')
        groups = self._groups(claims.get(config.groups_claim), config.groups_claim, fail)
        if config.require_user_match and user != agent_id:
            fail(f'token is for agent "{_show(agent_id)}"')
        return Identity(agent_id=agent_id, groups=groups, method="jwt")

    @staticmethod
    def _groups(value: object, claim: str, fail: Callable[[str], NoReturn]) -> frozenset[str]:
        if value is None:
            return frozenset()
        if isinstance(value, str):
            return frozenset(value.split())
        if isinstance(value, list) and all(isinstance(group, str) for group in value):
            return frozenset(value)
        fail(f'claim "{_show(claim)}" must be a list of strings or a space-separated string')

    async def _key_for(self, config: JwtConfig, alg: str, header: dict[str, Any], token: str,
                       fail: Callable[[str], NoReturn]) -> Any:
        """The verification key for `alg`.

        HMAC algorithms only ever use the configured secret: a JWKS is public, so
        taking a symmetric key from it would let anyone forge tokens. Asymmetric
        ones use the JWKS when the token names a key id (or there is no PEM key),
        else the configured PEM public key. PyJWT refuses a PEM key as an HMAC
        secret and a JWKS key whose algorithm differs from the token's.
        """
        if alg.startswith("HS"):
            if config.secret is None:
                fail(f"algorithm {_show(alg)} is not accepted")
            return config.secret
        kid = header.get("kid")
        if self._jwks is not None and (kid is not None or config.public_key is None):
            if kid is None:
                fail("token has no key id (kid)")
            return await self._jwks_key(token, kid, fail)
        if config.public_key is None:
            fail(f"algorithm {_show(alg)} is not accepted")
        return config.public_key

    async def _jwks_key(self, token: str, kid: str,
                        fail: Callable[[str], NoReturn]) -> jwt.PyJWK:
        assert self._jwks is not None
        try:
            # PyJWKClient does blocking HTTP (and caches the key set for 5 minutes).
            return await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
        except jwt.PyJWKClientConnectionError as exc:
            log.warning("could not fetch JWKS signing keys: %s", type(exc.__cause__).__name__)
            fail("could not fetch signing keys")
        except jwt.PyJWKClientError as exc:
            # PyJWT has no dedicated type for an unknown kid; it is the one
            # PyJWKClientError raised after the key set was fetched and parsed.
            if "Unable to find a signing key" in str(exc):
                fail(f'no signing key with key id "{_show(kid)}"')
            log.warning("unusable JWKS signing keys: %s", exc)
            fail("could not fetch signing keys")
        except (jwt.PyJWTError, OSError, ValueError) as exc:
            # An unusable key set: not JSON, no usable keys, connection reset mid-read.
            log.warning("could not fetch JWKS signing keys: %s", type(exc).__name__)
            fail("could not fetch signing keys")
