"""Who is calling: a Bearer JWT on every route of a service's API, verified with PyJWT.

The token's `sub` is the customer id; a `scope` claim holding `admin` marks an operator, who may
read and act on everything. The key comes from the settings (the environment): `AUTH_SECRET`
(HS256), or `AUTH_PUBLIC_KEY` (a PEM, RS256 or ES256 by its type), or `AUTH_JWKS_URL` (an identity
provider's keys, by the token's `kid`). Expiry is always checked, and the issuer and the audience
unless configured empty. A missing, garbled, expired, foreign or unsigned token is a 401 with
`WWW-Authenticate: Bearer`; a valid one without the right is a 403, or a 404 where even saying
"not yours" would disclose that something exists.

Health, readiness, metrics and the OpenAPI document are outside the routes this guards
(`create_service_app` mounts a service's controllers under the guard, and nothing else).
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any, Final

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.exceptions import ClientException, NotAuthorizedException, PermissionDeniedException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.middleware.base import DefineMiddleware
from litestar.openapi.spec import Components, SecurityRequirement, SecurityScheme
from litestar.types import ASGIApp

from web.params import NAME_MAX_LENGTH, NAME_PATTERN
from web.settings import ServiceSettings

ADMIN: Final = "admin"
#: Shorter HMAC secrets can be guessed offline from one token (RFC 7518 §3.2: at least the hash's size).
MIN_SECRET_BYTES: Final = 32
SCHEME: Final = "BearerToken"
#: The OpenAPI document's security scheme, and the requirement of every guarded route.
COMPONENTS = Components(
    security_schemes={
        SCHEME: SecurityScheme(
            type="http",
            scheme="bearer",
            bearer_format="JWT",
            description="`sub` = customer id; `scope` holding `admin` = operator.",
        )
    }
)
SECURITY: list[SecurityRequirement] = [{SCHEME: []}]

log = logging.getLogger(__name__)
_NAME = re.compile(NAME_PATTERN)
_REALM = 'Bearer realm="order-saga"'
_UNQUOTABLE = re.compile(r'[^\x20-\x7e]|["\\]')


class Principal(msgspec.Struct, frozen=True):
    """The caller: a customer (`customer_id`), or an operator (`admin`), who may do anything."""

    customer_id: str | None
    admin: bool = False

    @property
    def restricted_to(self) -> str | None:
        """The one customer whose rows this caller may touch; None for an operator."""
        return None if self.admin else self.customer_id

    def owns(self, customer_id: str) -> bool:
        """May read and act on what belongs to `customer_id`; routes answer 404 where not."""
        return self.admin or customer_id == self.customer_id

    def act_for(self, customer_id: str | None) -> str:
        """The customer a write is for: `customer_id` as sent (403 unless its own or an operator),
        else the caller itself."""
        if customer_id is None:
            if self.customer_id is None:
                raise ClientException(detail="say which customer this is for (customer_id)")
            return self.customer_id
        if not self.owns(customer_id):
            raise _forbidden(f"a customer acts only for itself, not for {customer_id!r}")
        return customer_id

    def listing(self, customer_id: str | None) -> str | None:
        """The customer a list is of: a customer's own by default, anyone's (None) or another
        customer's only for an operator (403)."""
        if self.admin:
            return customer_id
        return self.act_for(customer_id)

    def require_admin(self) -> None:
        if not self.admin:
            raise _forbidden("this needs an operator's token (scope admin)")


def _forbidden(detail: str) -> PermissionDeniedException:
    return PermissionDeniedException(
        detail=detail,
        headers={"WWW-Authenticate": f'{_REALM}, error="insufficient_scope", scope="{ADMIN}"'},
    )


def _unauthorized(detail: str, *, token_sent: bool = True) -> NotAuthorizedException:
    # RFC 6750 §3: a request with no credentials gets the bare challenge, a bad token its error.
    described = _UNQUOTABLE.sub("'", detail)  # a quoted-string of printable ASCII (RFC 9110)
    challenge = _REALM + (
        f', error="invalid_token", error_description="{described}"' if token_sent else ""
    )
    return NotAuthorizedException(detail=detail, headers={"WWW-Authenticate": challenge})


class Verifier:
    """Checks a token against the configured key and claims; built once per app."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.disabled = settings.auth_disabled
        self._issuer = settings.auth_issuer or None
        self._audience = settings.auth_audience or None
        self._leeway = settings.auth_leeway_s
        self._key: Any = None
        self._jwks: jwt.PyJWKClient | None = None
        self._algorithms: list[str] = []
        #: Why every token is refused: no key was configured (the service fails closed).
        self.unconfigured: str | None = None
        if self.disabled:
            return
        if settings.auth_secret is not None:
            if len(settings.auth_secret.encode()) < MIN_SECRET_BYTES:
                raise ValueError(f"AUTH_SECRET must be at least {MIN_SECRET_BYTES} bytes")
            self._key, self._algorithms = settings.auth_secret, ["HS256"]
        elif settings.auth_public_key is not None:
            self._key = _public_key(settings.auth_public_key)
            self._algorithms = ["RS256"] if isinstance(self._key, rsa.RSAPublicKey) else ["ES256"]
        elif settings.auth_jwks_url is not None:
            self._jwks = jwt.PyJWKClient(settings.auth_jwks_url, cache_keys=True, lifespan=300)
            self._algorithms = ["RS256", "ES256"]
        else:
            self.unconfigured = (
                "this service has no key to verify tokens with: set AUTH_SECRET (HS256), "
                "AUTH_PUBLIC_KEY or AUTH_JWKS_URL (RS256/ES256)"
            )

    async def principal(self, authorization: str | None) -> Principal:
        """The caller named by an `Authorization` header; 401 for anything but a valid token."""
        if self.disabled:
            return Principal(customer_id=None, admin=True)
        if self.unconfigured:
            raise _unauthorized(self.unconfigured, token_sent=bool(authorization))
        if not authorization:
            raise _unauthorized("send Authorization: Bearer <token>", token_sent=False)
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("the Authorization header must be: Bearer <token>")
        try:
            key = self._key if self._jwks is None else await self._jwks_key(token.strip())
            claims = jwt.decode(
                token.strip(),
                key,
                algorithms=self._algorithms,
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={
                    "require": ["exp", "sub"]
                    + (["iss"] if self._issuer else [])
                    + (["aud"] if self._audience else []),
                    # Unconfigured, a token's audience is not checked (PyJWT would refuse any).
                    "verify_aud": self._audience is not None,
                },
            )
        except jwt.PyJWKClientConnectionError as exc:
            raise _keys_unavailable() from exc
        except jwt.PyJWTError as exc:
            raise _unauthorized(f"invalid token: {exc}") from exc
        subject = claims["sub"]
        if (
            not isinstance(subject, str)
            or len(subject) > NAME_MAX_LENGTH
            or not _NAME.match(subject)
        ):
            raise _unauthorized(
                f"the token's sub must be a customer id: 1-{NAME_MAX_LENGTH} of [A-Za-z0-9_.-]"
            )
        return Principal(customer_id=subject, admin=ADMIN in _scopes(claims.get("scope")))

    async def _jwks_key(self, token: str) -> Any:
        jwks = self._jwks
        assert jwks is not None
        # PyJWKClient fetches with urllib (blocking) when its cache misses: off the event loop.
        signing_key = await asyncio.to_thread(jwks.get_signing_key_from_jwt, token)
        return signing_key.key


def _keys_unavailable() -> ClientException:
    return ClientException(
        status_code=503, detail="the identity provider's keys cannot be fetched, try again"
    )


def _scopes(scope: Any) -> set[str]:
    """OAuth's space-separated `scope`, or a list of scopes as some providers send."""
    if isinstance(scope, str):
        return set(scope.split())
    if isinstance(scope, list):
        return {s for s in scope if isinstance(s, str)}
    return set()


def _public_key(pem_or_path: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    pem = pem_or_path if "-----BEGIN" in pem_or_path else Path(pem_or_path).read_text()
    key = load_pem_public_key(pem.encode())
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ValueError("AUTH_PUBLIC_KEY must be an RSA (RS256) or EC P-256 (ES256) public key")
    return key


class BearerAuthentication(AbstractAuthenticationMiddleware):
    """Sets `request.user` to the caller's `Principal`, or answers 401."""

    def __init__(self, app: ASGIApp, verifier: Verifier) -> None:
        super().__init__(app)
        self.verifier = verifier

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        principal = await self.verifier.principal(connection.headers.get("authorization"))
        return AuthenticationResult(user=principal, auth=None)


def guard(settings: ServiceSettings) -> tuple[DefineMiddleware, dict[str, Provide]]:
    """The middleware that authenticates every request of the routes it wraps, and their
    `principal` dependency (`principal: NamedDependency[Principal]`). With no key configured, it
    refuses every request (and says so in the log): a service never runs open by mistake."""
    verifier = Verifier(settings)
    if verifier.unconfigured:
        log.warning("%s; every request will get 401", verifier.unconfigured)
    elif verifier.disabled:
        log.warning("AUTH_DISABLED: every request acts as an operator, unauthenticated")
    return (
        DefineMiddleware(BearerAuthentication, verifier=verifier),
        {"principal": Provide(_principal, sync_to_thread=False)},
    )


def _principal(request: Request[Principal, Any, Any]) -> Principal:
    return request.user
