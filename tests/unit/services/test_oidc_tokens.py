"""The provider's tokens (services/api/oidc.py) without a provider: keys made here,
the discovery document and JWKS served from memory. Every refusal has its own code;
the real Keycloak test (tests/e2e/test_oidc_keycloak.py) covers the same against a
real provider."""

from __future__ import annotations

import base64
import json
import time

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from services.api.identity import Role
from services.api.oidc import OidcSettings, Provider, TokenRefused, account_id_for

ISSUER = "https://id.shop.example/realms/shop"
NOW = 1_800_000_000


def settings(**over) -> OidcSettings:
    base = dict(issuer=ISSUER, client_id="commission-web", client_secret="s",
                audience="commission-api", role_map={"shop-seller": Role.SELLER,
                                                     "shop-reviewer": Role.REVIEWER},
                jwks_min_refetch_s=10.0)
    return OidcSettings(**{**base, **over})


class Served(Provider):
    """A provider whose HTTP answers come from memory; counts the JWKS fetches."""

    def __init__(self, keys: list[RSAKey], **over) -> None:
        super().__init__(settings(**over), clock=lambda: NOW)
        self.keys, self.jwks_fetches = keys, 0

    async def _get_json(self, url: str) -> dict:
        if url.endswith("/.well-known/openid-configuration"):
            return {"issuer": ISSUER, "jwks_uri": f"{ISSUER}/certs"}
        self.jwks_fetches += 1
        return {"keys": [k.as_dict(private=False) | {"use": "sig"} for k in self.keys]}


def rsa(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid})


KEY = rsa("k1")


def token(key=KEY, alg="RS256", **claims) -> str:
    body = {"iss": ISSUER, "sub": "user-1", "aud": ["commission-api", "account"],
            "exp": NOW + 300, "iat": NOW, "realm_access": {"roles": ["shop-seller", "x"]},
            "name": "Sam Seller", "email_verified": True, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode({"alg": alg, "kid": key.kid}, body, key)


async def refused(provider: Provider, raw: str) -> str:
    with pytest.raises(TokenRefused) as caught:
        await provider.verify_access_token(raw)
    return caught.value.code


async def test_a_good_token_gives_an_opaque_stable_identity_with_mapped_roles():
    provider = Served([KEY])
    claims = await provider.verify_access_token(token())
    who = provider.identity(claims)
    assert who.roles == {Role.SELLER} and who.verified and who.display_name == "Sam Seller"
    assert who.account_id == account_id_for(ISSUER, "user-1")
    assert who.account_id.startswith("o-") and len(who.account_id) == 28
    assert "sam" not in who.account_id.lower() and who.source == ISSUER
    # the same subject at another issuer is another account
    assert account_id_for("https://other.example", "user-1") != who.account_id


async def test_unsigned_and_symmetric_tokens_are_refused():
    header = base64.urlsafe_b64encode(b'{"alg":"none","kid":"k1"}').rstrip(b"=").decode()
    payload = token().split(".")[1]
    assert await refused(Served([KEY]), f"{header}.{payload}.") == "token_algorithm"
    # HS256 keyed with the public key's bytes: the classic key-confusion forgery
    public = json.dumps(KEY.as_dict(private=False)).encode()
    forged = jwt.encode({"alg": "HS256", "kid": "k1"}, {"iss": ISSUER, "sub": "x"},
                        OctKey.import_key(public), algorithms=["HS256"])
    assert await refused(Served([KEY]), forged) == "token_algorithm"


async def test_issuer_audience_expiry_and_not_before_each_have_their_code():
    provider = Served([KEY])
    assert await refused(provider, token(iss="https://evil.example")) == "token_issuer"
    assert await refused(provider, token(aud="account")) == "token_audience"
    assert await refused(provider, token(aud=None)) == "token_audience"
    assert await refused(provider, token(exp=NOW - 31)) == "token_expired"
    assert await refused(provider, token(nbf=NOW + 31)) == "token_not_yet_valid"
    assert await refused(provider, token(sub=None)) == "token_claims"
    # within the allowed clock skew (30 s) both are still good
    await provider.verify_access_token(token(exp=NOW - 29, nbf=NOW + 29))


async def test_a_forged_signature_and_an_unknown_key_are_refused():
    provider = Served([KEY])
    impostor = rsa("k1")  # claims the provider's key id
    assert await refused(provider, token(key=impostor)) == "token_signature"
    assert await refused(provider, token(key=rsa("nobody"))) == "token_key_unknown"


async def test_a_new_key_is_fetched_once_and_made_up_key_ids_cannot_hammer_the_provider():
    provider = Served([KEY], jwks_min_refetch_s=1.0)
    made_up, rotated = [rsa(f"made-up-{n}") for n in range(3)], rsa("k2")
    await provider.verify_access_token(token())
    assert provider.jwks_fetches == 1
    for key in made_up:  # made-up key ids in a burst: no fetch within the interval
        assert await refused(provider, token(key=key)) == "token_key_unknown"
    assert provider.jwks_fetches == 1
    provider.keys = [rotated]  # the provider rotates: k1 removed, k2 added
    time.sleep(1.05)
    await provider.verify_access_token(token(key=rotated))  # unknown kid: fetched
    assert provider.jwks_fetches == 2
    assert await refused(provider, token()) == "token_key_unknown"  # k1 is gone


async def test_an_id_token_must_carry_the_sign_ins_nonce_and_be_for_the_client():
    provider = Served([KEY])
    good = token(aud="commission-web", nonce="n-1")
    assert (await provider.verify_id_token(good, "n-1"))["sub"] == "user-1"
    with pytest.raises(TokenRefused) as caught:
        await provider.verify_id_token(good, "n-2")
    assert caught.value.code == "token_nonce"
    with pytest.raises(TokenRefused) as caught:
        await provider.verify_id_token(token(aud=["commission-web", "other"], azp="other",
                                             nonce="n-1"), "n-1")
    assert caught.value.code == "token_audience"


def test_settings_refuse_unsafe_algorithms_and_bad_role_maps(monkeypatch, tmp_path):
    monkeypatch.setenv("OIDC_ISSUER", ISSUER)
    monkeypatch.setenv("OIDC_CLIENT_ID", "commission-web")
    with pytest.raises(SystemExit):
        OidcSettings.from_env()  # no client secret
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("OIDC_CLIENT_SECRET_FILE", str(secret))
    monkeypatch.setenv("OIDC_ROLE_MAP", "shop-seller:seller, shop-funder:funder")
    s = OidcSettings.from_env()
    assert s.role_map == {"shop-seller": Role.SELLER, "shop-funder": Role.FUNDER}
    assert s.audience == "commission-web"  # defaults to the client id
    assert s.client_secret == "from-a-file"
    for bad in ("HS256", "none", "RS256,none"):
        monkeypatch.setenv("OIDC_ALGORITHMS", bad)
        with pytest.raises(SystemExit):
            OidcSettings.from_env()
    monkeypatch.delenv("OIDC_ALGORITHMS")
    monkeypatch.setenv("OIDC_ROLE_MAP", "shop-seller:admin")
    with pytest.raises(SystemExit):
        OidcSettings.from_env()
    monkeypatch.setenv("OIDC_ROLE_MAP", "")
    monkeypatch.setenv("OIDC_ISSUER", "http://id.shop.example/realms/shop")
    with pytest.raises(SystemExit):
        OidcSettings.from_env(production=True)  # a provider in the clear
