"""Tokens are verified with the configured key only: HS256 with a secret, RS256 or ES256 with a
public key or an identity provider's JWKS; and what the tools mint, the services accept."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from litestar.exceptions import (
    ClientException,
    NotAuthorizedException,
    PermissionDeniedException,
)

from tests.support.answering import answering
from tools.tokens import Tokens, new_secret
from web.auth import Principal, Verifier
from web.settings import ServiceSettings


def settings(**auth: object) -> ServiceSettings:
    return ServiceSettings(service="probe", port=0, database_url="postgresql://nowhere", **auth)


def principal(verifier: Verifier, token: str) -> Principal:
    return asyncio.run(verifier.principal(f"Bearer {token}"))


def refused(verifier: Verifier, token: str) -> str:
    with pytest.raises(NotAuthorizedException) as caught:
        principal(verifier, token)
    assert caught.value.headers["WWW-Authenticate"].startswith("Bearer ")
    return str(caught.value.detail)


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def hs256_signed_with(secret: str, claims: dict[str, object]) -> str:
    def part(value: bytes) -> str:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()

    signing_input = ".".join(
        part(json.dumps(v).encode()) for v in ({"alg": "HS256", "typ": "JWT"}, claims)
    )
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{part(signature)}"


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def test_an_hs256_token_names_a_customer_or_an_operator():
    secret = new_secret()
    verifier, tokens = Verifier(settings(auth_secret=secret)), Tokens.hs256(secret)

    assert principal(verifier, tokens.mint("alice")) == Principal("alice", admin=False)
    assert principal(verifier, tokens.mint("root", admin=True)) == Principal("root", admin=True)
    assert "Signature" in refused(verifier, Tokens.hs256(new_secret()).mint("alice"))


def test_a_short_secret_is_refused_at_start():
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Verifier(settings(auth_secret="short"))


@pytest.mark.parametrize(
    ("key", "algorithm"), [(RSA_KEY, "RS256"), (EC_KEY, "ES256")], ids=["RS256", "ES256"]
)
def test_a_public_key_verifies_what_its_private_key_signed_and_nothing_else(key, algorithm):
    verifier = Verifier(settings(auth_public_key=pem(key)))
    tokens = Tokens(key, algorithm)

    assert principal(verifier, tokens.mint("alice")) == Principal("alice")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm == "ES256":
        other = ec.generate_private_key(ec.SECP256R1())
    refused(verifier, Tokens(other, algorithm).mint("alice"))
    # The public key used as an HMAC secret: the classic algorithm confusion (PyJWT will not
    # even sign it, so it is signed by hand).
    refused(verifier, hs256_signed_with(pem(key), {"sub": "alice", "scope": "admin"}))


def test_the_public_key_may_be_a_file(tmp_path):
    path = tmp_path / "key.pem"
    path.write_text(pem(RSA_KEY))
    verifier = Verifier(settings(auth_public_key=str(path)))
    assert principal(verifier, Tokens(RSA_KEY, "RS256").mint("alice")).customer_id == "alice"


@pytest.fixture
def jwks_url() -> Iterator[str]:
    """An identity provider's key set on a loopback port: the RSA and EC keys, by `kid`."""
    keys = []
    for kid, key in (("rsa-1", RSA_KEY), ("ec-1", EC_KEY)):
        algorithm = (
            jwt.algorithms.RSAAlgorithm if kid.startswith("rsa") else jwt.algorithms.ECAlgorithm
        )
        keys.append({**json.loads(algorithm.to_jwk(key.public_key())), "kid": kid, "use": "sig"})
    document = json.dumps({"keys": keys}).encode()
    with answering(document, "application/json") as port:
        yield f"http://127.0.0.1:{port}/.well-known/jwks.json"


def test_a_jwks_url_gives_the_key_the_token_names(jwks_url):
    verifier = Verifier(settings(auth_jwks_url=jwks_url))

    assert principal(verifier, Tokens(RSA_KEY, "RS256", kid="rsa-1").mint("alice")).customer_id == (
        "alice"
    )
    assert principal(verifier, Tokens(EC_KEY, "ES256", kid="ec-1").mint("bob")).customer_id == "bob"
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused(verifier, Tokens(stranger, "RS256", kid="rsa-1").mint("alice"))
    refused(verifier, Tokens(RSA_KEY, "RS256", kid="no-such-key").mint("alice"))


def test_an_unreachable_jwks_url_is_a_503_not_a_401():
    verifier = Verifier(settings(auth_jwks_url="http://127.0.0.1:9/jwks.json"))
    with pytest.raises(ClientException) as caught:
        principal(verifier, Tokens(RSA_KEY, "RS256", kid="rsa-1").mint("alice"))
    assert caught.value.status_code == 503


def test_issuer_and_audience_are_checked_unless_configured_empty():
    secret = new_secret()
    strict = Verifier(settings(auth_secret=secret))
    lax = Verifier(settings(auth_secret=secret, auth_issuer="", auth_audience=""))

    assert "issuer" in refused(strict, Tokens(secret, issuer="elsewhere").mint("alice")).lower()
    assert "audience" in refused(strict, Tokens(secret, audience="elsewhere").mint("a")).lower()
    foreign = Tokens(secret, issuer="elsewhere", audience="elsewhere")
    assert principal(lax, foreign.mint("alice")).customer_id == "alice"
    assert principal(lax, Tokens(secret, issuer="", audience="").mint("bob")).customer_id == "bob"


def test_a_service_with_no_key_refuses_every_request_and_says_why():
    verifier = Verifier(settings())
    detail = refused(verifier, Tokens.hs256(new_secret()).mint("alice"))
    assert "AUTH_SECRET" in detail


def test_with_authentication_disabled_every_caller_is_an_operator():
    verifier = Verifier(settings(auth_disabled=True))
    assert asyncio.run(verifier.principal(None)) == Principal(None, admin=True)


def test_a_customer_acts_for_itself_and_an_operator_for_anyone():
    alice, operator = Principal("alice"), Principal("root", admin=True)

    assert alice.act_for(None) == alice.act_for("alice") == "alice"
    with pytest.raises(PermissionDeniedException):
        alice.act_for("bob")
    assert operator.act_for("bob") == "bob"
    assert (alice.listing(None), operator.listing(None), operator.listing("bob")) == (
        "alice",
        None,
        "bob",
    )
    assert alice.owns("alice")
    assert not alice.owns("bob")
    assert operator.owns("bob")
    with pytest.raises(PermissionDeniedException):
        alice.require_admin()


def test_the_tools_mint_with_the_configured_key_or_none_when_auth_is_off():
    secret = new_secret()
    tokens = Tokens.from_env({"AUTH_SECRET": secret, "AUTH_AUDIENCE": "shop"})
    assert tokens is not None
    claims = jwt.decode(tokens.mint("alice", admin=True), secret, ["HS256"], audience="shop")
    assert (claims["sub"], claims["scope"], claims["aud"], claims["iss"]) == (
        "alice",
        "admin",
        "shop",
        "order-saga",
    )
    assert Tokens.from_env({"AUTH_DISABLED": "true"}) is None
