"""Tokens as a user's client gets them: minted from the configured key, for a customer or an operator.

The one place that mints: `make token`, the demo, the checker, the harness (and so the tests and
the benchmark) all ask `Tokens`. Locally the key is the HS256 secret the services verify with:
`AUTH_SECRET`, or else the one `make up` wrote to `.run/auth_secret`. Against services that verify
RS256 or ES256 (`AUTH_PUBLIC_KEY`), `AUTH_PRIVATE_KEY` (a PEM, or its path) signs instead, as an
identity provider would. `python -m tools.tokens SUB [--admin]` prints one (`make token`).
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from web.auth import ADMIN
from web.settings import DEFAULT_AUDIENCE, DEFAULT_ISSUER

ROOT = Path(__file__).resolve().parent.parent
#: The local secret `make up` generates when none is given, kept for later runs.
LOCAL_SECRET = ROOT / ".run" / "auth_secret"
#: Who the tools act as when they act as an operator.
OPERATOR = "operator"


@dataclass(frozen=True)
class Tokens:
    """Mints tokens the services accept: `key` signs with `algorithm`, for `issuer`/`audience`."""

    key: Any = field(repr=False)  # a secret: never in a log or a test's failure output
    algorithm: str = "HS256"
    issuer: str = DEFAULT_ISSUER
    audience: str = DEFAULT_AUDIENCE
    ttl_s: float = 3600.0
    kid: str | None = None

    def mint(self, sub: str, *, admin: bool = False, ttl_s: float | None = None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + int(ttl_s or self.ttl_s)}
        if self.issuer:
            claims["iss"] = self.issuer
        if self.audience:
            claims["aud"] = self.audience
        if admin:
            claims["scope"] = ADMIN
        headers = {"kid": self.kid} if self.kid else None
        return jwt.encode(claims, self.key, algorithm=self.algorithm, headers=headers)

    def bearer(self, sub: str, *, admin: bool = False) -> dict[str, str]:
        """An `Authorization` header for `sub`."""
        return {"Authorization": f"Bearer {self.mint(sub, admin=admin)}"}

    def operator(self) -> dict[str, str]:
        """An operator's `Authorization` header (scope admin)."""
        return self.bearer(OPERATOR, admin=True)

    def auth(self, sub: str = OPERATOR, *, admin: bool | None = None) -> Bearer:
        """httpx's `auth=` for `sub` (an operator by default), with a fresh token per request."""
        return Bearer(self, sub, sub == OPERATOR if admin is None else admin)

    @classmethod
    def hs256(cls, secret: str, env: Mapping[str, str] | None = None) -> Tokens:
        return cls(secret, "HS256", **_claims(env or {}))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Tokens | None:
        """What the services started from this environment accept; None if they check nothing
        (`AUTH_DISABLED`). With no key given, the local secret (`make up` makes it)."""
        env = os.environ if env is None else env
        if env.get("AUTH_DISABLED", "").lower() in ("1", "true", "yes"):
            return None
        if private := env.get("AUTH_PRIVATE_KEY"):
            pem = private if "-----BEGIN" in private else Path(private).read_text()
            key = load_pem_private_key(pem.encode(), password=None)
            algorithm = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
            return cls(key, algorithm, kid=env.get("AUTH_KID"), **_claims(env))
        if env.get("AUTH_PUBLIC_KEY") or env.get("AUTH_JWKS_URL"):
            raise SystemExit(
                "the services verify RS256/ES256 tokens: set AUTH_PRIVATE_KEY to mint one"
            )
        return cls.hs256(env.get("AUTH_SECRET") or local_secret(create=False), env)


class Bearer(httpx.Auth):
    """Sends each request with a token just minted: a long-running client never sends one that
    has expired."""

    def __init__(self, tokens: Tokens, sub: str, admin: bool) -> None:
        self.tokens, self.sub, self.admin = tokens, sub, admin

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.tokens.mint(self.sub, admin=self.admin)}"
        yield request


def _claims(env: Mapping[str, str]) -> dict[str, str]:
    return {
        "issuer": env.get("AUTH_ISSUER", DEFAULT_ISSUER),
        "audience": env.get("AUTH_AUDIENCE", DEFAULT_AUDIENCE),
    }


def new_secret() -> str:
    return secrets.token_urlsafe(48)  # 64 characters: long enough for HS512 too


def local_secret(*, create: bool) -> str:
    """The local HS256 secret of `make up`'s services; made (readable by its owner only) if
    `create` and there is none yet."""
    if not LOCAL_SECRET.exists():
        if not create:
            raise SystemExit(f"no AUTH_SECRET and no {LOCAL_SECRET}: run `make up` first")
        LOCAL_SECRET.parent.mkdir(parents=True, exist_ok=True)
        LOCAL_SECRET.touch(mode=0o600)
        LOCAL_SECRET.write_text(new_secret())
    return LOCAL_SECRET.read_text().strip()


def service_auth_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """What `make up` gives the services: the configured key if one is, else the local secret."""
    env = os.environ if env is None else env
    return {} if names_a_key(env) else {"AUTH_SECRET": local_secret(create=True)}


def names_a_key(env: Mapping[str, str]) -> bool:
    """Whether `env` tells the services how to verify tokens (or not to)."""
    keys = ("AUTH_SECRET", "AUTH_PUBLIC_KEY", "AUTH_JWKS_URL", "AUTH_DISABLED")
    return any(env.get(key) for key in keys)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tools.tokens", description="Print a token the services accept."
    )
    parser.add_argument("sub", help="the customer id (the token's sub)")
    parser.add_argument("--admin", action="store_true", help="an operator's token (scope admin)")
    parser.add_argument("--ttl", type=float, default=3600.0, help="seconds it is valid")
    args = parser.parse_args()
    tokens = Tokens.from_env()
    if tokens is None:
        raise SystemExit("AUTH_DISABLED is set: the services take no token")
    print(tokens.mint(args.sub, admin=args.admin, ttl_s=args.ttl))


if __name__ == "__main__":
    main()
