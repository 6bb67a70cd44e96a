"""The OpenAPI 3.1 document of the HTTP API, served at GET /openapi.json.

Request bodies come from the same msgspec types the handlers decode with, so the
document cannot drift from what the server accepts; responses are written out here
and checked against the running server by tests/e2e/test_api_contract.py
(schemathesis).
"""

from __future__ import annotations

import json

import msgspec

from services.api.accountpages import Erase, PasswordChange, SignUp
from services.api.writes import (
    ApproveBody,
    CirculateBody,
    DeclineBody,
    Login,
    OfferBody,
    PoolBody,
    RefundBody,
)

REF = "#/components/schemas/{name}"

ERROR = {"type": "object", "required": ["error", "detail"],
         "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}}
MONEY = {"type": "object", "required": ["amount_minor", "currency"],
         "properties": {"amount_minor": {"type": "integer", "minimum": 0},
                        "currency": {"type": "string"}}}
SUMMARY = {
    "type": "object",
    "required": ["id", "status", "price", "commission", "chain_length", "share_link"],
    "properties": {
        "id": {"type": "string"}, "name": {"type": "string"},
        "status": {"enum": ["issued", "posted", "purchased", "refunded", "cancelled",
                            "closed"]},
        "price": MONEY, "commission": MONEY,
        "pool_status": {"enum": ["open", "withdrawn", "frozen", None]},
        "holder": {"type": ["string", "null"]}, "chain_length": {"type": "integer"},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "thresholds": {"type": "object"}, "share_link": {"type": "string"},
        "time_left_ms": {"type": ["integer", "null"]}, "copies_left": {"type": "integer"},
        "copies": {"type": "integer", "description": "copies the offer was issued in"},
        "offer_id": {"type": "string"},
        "funding_confirmed": {"type": "boolean",
                              "description": "the payment system holds the budget in escrow"},
        "odds": {"type": "array", "description": "every random amount the pool draws: "
                 "uniform over [min_minor, max_minor], drawn from a server-side secret",
                 "items": {"type": "object", "required": ["draw", "distribution", "min_minor",
                                                          "max_minor"],
                           "properties": {"draw": {"enum": ["acquisition", "replenishment"]},
                                          "distribution": {"enum": ["uniform"]},
                                          "min_minor": {"type": "integer"},
                                          "max_minor": {"type": "integer"}}}},
        "held_until_ms": {"type": ["integer", "null"],
                          "description": "bought: commission and price are held until "
                          "then (null: no hold pending)"},
        "held_minor": {"type": "integer", "minimum": 0},
        "refunded_minor": {"type": "integer", "minimum": 0},
        "closes_at_ms": {"type": ["integer", "null"],
                         "description": "unsold by then, the certificate closes"},
        "budget_minor": {"type": ["integer", "null"], "minimum": 0,
                         "description": "the funder's budget (null: no pool)"},
        "budget_left_minor": {"type": ["integer", "null"], "minimum": 0,
                              "description": "what of it sharers can still earn: attached "
                              "and reserve"},
        "acquisition": {"type": ["object", "null"],
                        "description": "the pool's acquisition policy (who, when, how much, "
                        "max_depth)"},
    },
}
CHECKOUT = {"type": "object", "required": ["checkout_id", "checkout_url", "certificate_id"],
            "properties": {"checkout_id": {"type": "string"},
                           "checkout_url": {"type": "string", "description":
                                            "the payment system's payment page: send the "
                                            "buyer there"},
                           "certificate_id": {"type": "string"}}}
ACCEPTED = {"type": "object", "required": ["command_ids", "status_urls"],
            "properties": {"command_ids": {"type": "array", "items": {"type": "string"}},
                           "status_urls": {"type": "array", "items": {"type": "string"}},
                           "certificate_ids": {"type": "array", "items": {"type": "string"}},
                           "offer_id": {"type": "string"}}}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    texts = {400: "malformed JSON, too deeply nested, an invalid id or parameter",
             401: "not logged in", 403: "not this account's, or sent from another site",
             404: "not found", 409: "not possible in the certificate's state",
             413: "body larger than 64 KiB", 422: "invalid body",
             429: "rate limited (see Retry-After)",
             502: "the payment system did not answer"}
    return {str(c): {"description": texts[c], **_json(ERROR)} for c in codes}


ID_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 64,
             "pattern": "^[A-Za-z0-9][A-Za-z0-9._:@~-]*$",
             "description": "an id: 1-64 characters of [A-Za-z0-9._:@~-] (else 400 invalid_id)"}


def _path_id() -> list[dict]:
    return [{"name": "id", "in": "path", "required": True, "schema": ID_SCHEMA}]


def _write(summary: str, body: type | None, *, path_id: bool = True) -> dict:
    op = {"summary": summary, "security": [{"bearer": []}],
          "responses": {"202": {"description": "sent; see status_urls", **_json(ACCEPTED)},
                        **_errors(400, 401, 403, 413, 422, 429)}}
    if path_id:
        op["parameters"] = _path_id()
    if body is not None:
        op["requestBody"] = {"required": True,
                             **_json({"$ref": REF.format(name=body.__name__)})}
    return {"post": op}


# every operation has an id: generated clients name their methods after them
OPERATION_IDS = {
    ("/catalogue", "get"): "listCatalogue", ("/certificates/{id}", "get"): "getCertificate",
    ("/c/{id}", "get"): "resolveShareLink", ("/accounts/{id}/feed", "get"): "getFeed",
    ("/accounts/{id}/earnings", "get"): "getEarnings", ("/login", "post"): "logIn",
    ("/offers", "post"): "issueOffer", ("/certificates/{id}/pool", "post"): "attachPool",
    ("/certificates/{id}/post", "post"): "postCertificate",
    ("/certificates/{id}/circulate", "post"): "circulate",
    ("/certificates/{id}/claim", "post"): "claim",
    ("/certificates/{id}/checkout", "post"): "startCheckout",
    ("/logout", "post"): "logOut",
    ("/certificates/{id}/refund", "post"): "refund",
    ("/certificates/{id}/cancel", "post"): "cancelCertificate",
    ("/certificates/{id}/decline", "post"): "declineCommission",
    ("/certificates/{id}/approve", "post"): "approveCommission",
    ("/commands/{id}", "get"): "getCommandOutcome",
    ("/accounts", "post"): "signUp", ("/accounts/me", "get"): "getMyAccount",
    ("/accounts/me/password", "post"): "changePassword",
    ("/accounts/me/export", "get"): "exportMyData", ("/accounts/me/erase", "post"): "eraseMe",
}


def _plain_defaults(node):
    """An object-valued ``default`` (a nested policy's defaults) is said in words: some
    client generators cannot give a model property a default value."""
    if isinstance(node, dict):
        out = {k: _plain_defaults(v) for k, v in node.items()}
        if isinstance(out.get("default"), dict):
            default = json.dumps(out.pop("default"), sort_keys=True)
            out["description"] = (out.get("description", "") + f" Default: {default}.").strip()
        return out
    if isinstance(node, list):
        return [_plain_defaults(v) for v in node]
    return node


def document() -> dict:
    doc = _plain_defaults(_document())
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            op["operationId"] = OPERATION_IDS[(path, method)]
            op.setdefault("security", [])  # public: no login needed
    return doc


def _document() -> dict:
    bodies = [Login, OfferBody, PoolBody, CirculateBody, RefundBody, DeclineBody, ApproveBody, SignUp, PasswordChange,
              Erase]
    _, components = msgspec.json.schema_components(bodies, ref_template=REF)
    page = {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1}}
    size = {"name": "size", "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 100}}
    sort = {"name": "sort", "in": "query", "schema": {"enum": ["commission", "time_left"]}}
    read = {"description": "OK"}
    return {
        "openapi": "3.1.0",
        "servers": [{"url": "/", "description": "the server this document was read from"}],
        "info": {"title": "Commission engine API", "version": "1.0.0",
                 "license": {"name": "Proprietary", "identifier": "LicenseRef-Proprietary"},
                 "description": "Catalogue, certificates, share links, feeds and earnings; "
                                "commands as the logged-in account. Money is an integer "
                                "amount in minor units with an ISO 4217 currency."},
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {
                           "type": "http", "scheme": "bearer",
                           "description": "A session token from POST /login or, when the "
                           "API has the shop's identity provider (OIDC_ISSUER), the "
                           "provider's access token (a person's, or a back end's client "
                           "credentials); a refused provider token is a 401 whose error is "
                           "token_algorithm, token_issuer, token_key_unknown, "
                           "token_signature, token_expired, token_not_yet_valid, "
                           "token_audience or token_claims"}}},
        "paths": {
            "/catalogue": {"get": {"summary": "Posted certificates", "parameters": [sort, page, size],
                                   "responses": {"200": {**read, **_json({
                                       "type": "object",
                                       "required": ["items", "total", "page", "size", "sort"],
                                       "properties": {"items": {"type": "array", "items": SUMMARY},
                                                      "total": {"type": "integer"},
                                                      "page": {"type": "integer"},
                                                      "size": {"type": "integer"},
                                                      "sort": {"type": "string"}}})},
                                                 **_errors(400)}}},
            "/certificates/{id}": {"get": {"summary": "A certificate", "parameters": _path_id(),
                                           "responses": {"200": {**read, **_json(SUMMARY)},
                                                         **_errors(400, 404)}}},
            "/c/{id}": {"get": {"summary": "Resolve a share link",
                                "parameters": [*_path_id(), {"name": "via", "in": "query",
                                                             "schema": ID_SCHEMA}],
                                "responses": {"200": {**read, **_json({
                                    "type": "object",
                                    "required": ["certificate", "via_valid", "circulate"],
                                    "properties": {"certificate": SUMMARY,
                                                   "via": {"type": ["string", "null"]},
                                                   "via_valid": {"type": "boolean"},
                                                   "circulate": {"type": "object"}}})},
                                              **_errors(400, 404)}}},
            "/accounts/{id}/feed": {"get": {"summary": "Certificates an account holds (the "
                                                       "logged-in account's own)",
                                            "parameters": _path_id(),
                                            "security": [{"bearer": []}],
                                            "responses": {"200": {**read, **_json({
                                                "type": "object",
                                                "required": ["account_id", "items"],
                                                "properties": {"account_id": {"type": "string"},
                                                               "items": {"type": "array",
                                                                         "items": SUMMARY},
                                                               # each share: counted, or why not
                                                               "shares": {"type": "array"},
                                                               "refused_shares": {
                                                                   "type": "array"}}})},
                                                **_errors(400, 401, 403)}}},
            "/accounts/{id}/earnings": {"get": {"summary": "Pending, paid and voided earnings "
                                                           "(the logged-in account's own)",
                                                "parameters": _path_id(),
                                                "security": [{"bearer": []}],
                                                "responses": {"200": {**read, **_json({
                                                    "type": "object",
                                                    "required": ["account_id", "earnings"],
                                                    "properties": {
                                                        "account_id": {"type": "string"},
                                                        "earnings": {"type": "object"},
                                                        # one line per gain: history, gross,
                                                        # offset, net (services/api/earnings.py)
                                                        "gains": {"type": "array"},
                                                        "totals": {"type": "object"}}})},
                                                    **_errors(400, 401, 403)}}},
            "/login": {"post": {"summary": "Log in; returns a bearer token (a signed session: "
                                           "idle timeout, re-issued in the Session-Token "
                                           "header as it is used; throttled after failures)",
                                "requestBody": {"required": True,
                                                **_json({"$ref": REF.format(name="Login")})},
                                "responses": {"200": {**read, **_json({
                                    "type": "object", "required": ["token", "account_id"],
                                    "properties": {"token": {"type": "string"},
                                                   "account_id": {"type": "string"},
                                                   "expires_at_s": {"type": "integer"}}})},
                                              **_errors(400, 401, 403, 413, 422, 429)}}},
            "/logout": {"post": {"summary": "End the bearer token's session",
                                 "security": [{"bearer": []}],
                                 "responses": {"200": {**read, **_json({
                                     "type": "object", "required": ["logged_out"],
                                     "properties": {"logged_out": {"type": "boolean"}}})},
                                               **_errors(401, 403)}}},
            "/offers": _write("Issue an offer of N copies (the seller)", OfferBody,
                              path_id=False),
            "/certificates/{id}/pool": _write("Attach a commission pool (the funder)", PoolBody),
            "/certificates/{id}/post": _write("Post to the catalogue (the seller)", None),
            "/certificates/{id}/circulate": _write("Circulate (share)", CirculateBody),
            "/certificates/{id}/claim": _write("Claim a claimable commission", None),
            "/certificates/{id}/checkout": {"post": {
                "summary": "Buy: start a checkout at the payment system. The purchase counts "
                           "once the payment system reports the captured payment (with its "
                           "own key); the certificate then shows as purchased",
                "security": [{"bearer": []}], "parameters": _path_id(),
                "responses": {"201": {"description": "send the buyer to checkout_url",
                                      **_json(CHECKOUT)},
                              **_errors(400, 401, 403, 404, 409, 413, 429, 502)}}},
            "/certificates/{id}/refund": _write(
                "Refund part or all of the price (the seller), within the hold; once the "
                "price was paid out the refund goes through the payment system, which takes "
                "it from the seller (refused here: refund_after_hold)", RefundBody),
            "/certificates/{id}/cancel": _write("Take an unsold certificate off sale (the "
                                                "seller)", None),
            "/certificates/{id}/decline": _write(
                "Review: decline a sharer's commission before it is paid (pending, held, or "
                "kept back by a fraud flag); it goes back to the funder and the sharer sees "
                "the reason (the certificate's seller, or the reviewer role)", DeclineBody),
            "/certificates/{id}/approve": _write(
                "Review: clear a fraud flag; a commission kept back after the hold is paid "
                "(the reviewer role only)", ApproveBody),
            "/commands/{id}": {"get": {"summary": "A command's outcome",
                                       "security": [{"bearer": []}], "parameters": _path_id(),
                                       "responses": {"200": {**read, **_json({
                                           "type": "object", "required": ["status"],
                                           "properties": {"status": {"enum": [
                                               "pending", "accepted", "rejected"]}}})},
                                                     **_errors(400, 401, 404)}}},
            **_account_paths(read),
        },
    }


def _body(name: str) -> dict:
    return {"requestBody": {"required": True, **_json({"$ref": REF.format(name=name)})}}


def _account_paths(read: dict) -> dict:
    """Sign-up, the profile, password change, export and erasure
    (services/api/accountpages.py)."""
    mine = {"security": [{"bearer": []}]}
    obj = {"type": "object"}
    return {
        "/accounts": {"post": {
            "summary": "Sign up (the built-in account store); returns a session token. "
                       "roles: only those the operator offers (API_SIGNUP_ROLES)",
            **_body("SignUp"),
            "responses": {"201": {"description": "created", **_json({
                "type": "object", "required": ["account_id", "token"],
                "properties": {"account_id": {"type": "string"}, "token": {"type": "string"},
                               "expires_at_s": {"type": "integer"},
                               "display_name": {"type": "string"},
                               "roles": {"type": "array", "items": {"type": "string"}}}})},
                          **_errors(400, 403, 409, 413, 422, 429)}}},
        "/accounts/me": {"get": {"summary": "Your profile", **mine, "responses": {
            "200": {**read, **_json(obj)}, **_errors(401)}}},
        "/accounts/me/password": {"post": {
            "summary": "Change your password; every other session of the account ends",
            **mine, **_body("PasswordChange"),
            "responses": {"200": {**read, **_json(obj)},
                          **_errors(400, 401, 403, 409, 413, 422, 429)}}},
        "/accounts/me/export": {"get": {
            "summary": "Your data: profile, certificates, gains, payouts", **mine,
            "responses": {"200": {**read, **_json({
                "type": "object",
                "required": ["profile", "certificates", "gains", "payouts"],
                "properties": {"profile": obj, "payouts": obj,
                               "certificates": {"type": "array", "items": obj},
                               "gains": {"type": "array", "items": obj}}})},
                **_errors(401)}}},
        "/accounts/me/erase": {"post": {
            "summary": "Erase your account (password, or the account id for an account "
                       "without one): personal data leaves the store and the pages",
            **mine, **_body("Erase"),
            "responses": {"200": {**read, **_json(obj)},
                          **_errors(400, 401, 403, 413, 422, 429)}}},
    }
