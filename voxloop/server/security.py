"""Who may connect: the API key, short-lived client secrets for browsers, and the origin allow-list.

    programs   `Authorization: Bearer <API key>` on any request, the WebSocket handshake included
    browsers   POST /v1/realtime/client_secrets (with the key, from your backend) → {value, expires_at};
               the page opens the WebSocket with the subprotocols ["realtime", "openai-insecure-api-key.<value>"]
               (browsers cannot set WebSocket headers; OpenAI's convention). A `?token=` query is not accepted:
               query strings end up in access logs and proxies.

Auth is on when `security.require_auth` is `always`, or `auto` and the server binds beyond loopback; then a
key must be configured (environment variable or secrets file) or the server refuses to start. The key is
compared in constant time and never logged or sent. Client secrets are HMAC-signed with a per-process
secret, so they need no store and die with the process. `SecurityMiddleware` enforces all of it by path
(/api/*, /v1/*, /metrics), so a new route under those prefixes is covered without remembering to;
`require_auth` is the same check as a FastAPI dependency for routes elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from voxloop.pipeline.config import SecuritySettings, Settings
from voxloop.pipeline.errors import ConfigError

log = logging.getLogger(__name__)

KEY_SUBPROTOCOL = "openai-insecure-api-key."
TOKEN_PREFIX = "ek_"
CLOSE_POLICY_VIOLATION = 1008
MINT_PATH = "/v1/realtime/client_secrets"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
LOOPBACK_ORIGIN = re.compile(r"^https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?$")
MINT_HINT = f"mint a new one with POST {MINT_PATH}"


def is_loopback(host: str) -> bool:
    """Does binding `host` keep the server to this machine?"""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_api_key(settings: SecuritySettings, env: Mapping[str, str] | None = None) -> str | None:
    """The API key from its environment variable, else from the secrets file; None when neither is set."""
    value = (os.environ if env is None else env).get(settings.api_key_env, "").strip()
    if value or settings.api_key_file is None:
        return value or None
    try:
        value = Path(settings.api_key_file).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"security.api_key_file {settings.api_key_file} cannot be read ({exc.strerror}): "
            "point it at a file holding the key, readable by this user"
        ) from None
    if not value:
        raise ConfigError(f"security.api_key_file {settings.api_key_file} is empty: put the API key in it")
    return value


def auth_required(settings: SecuritySettings, host: str) -> bool:
    if settings.require_auth == "auto":
        return not is_loopback(host)
    return settings.require_auth == "always"


# --- client secrets -------------------------------------------------------------------------


class TokenMinter:
    """Short-lived tokens `ek_<expires_at>.<nonce>.<hmac>`, checked without any store."""

    def __init__(self, *, secret: bytes | None = None, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self._clock = clock

    def mint(self, ttl_s: int) -> tuple[str, int]:
        """A new token and the Unix time it expires at."""
        expires_at = math.ceil(self._clock() + ttl_s)  # lives at least ttl_s
        body = f"{expires_at}.{secrets.token_urlsafe(12)}"
        return f"{TOKEN_PREFIX}{body}.{self._sign(body)}", expires_at

    def refusal(self, token: str) -> str | None:
        """Why `token` is not accepted, or None when it is."""
        body, _, signature = token.removeprefix(TOKEN_PREFIX).rpartition(".")
        expires, _, _ = body.partition(".")
        if not expires.isdigit() or not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            return f"the token is not valid (altered, or minted before the server restarted): {MINT_HINT}"
        if int(expires) <= self._clock():
            return f"the token has expired: {MINT_HINT}"
        return None

    def _sign(self, body: str) -> str:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).hexdigest()


# --- the authenticator ----------------------------------------------------------------------


class Authenticator:
    """Checks a credential (the API key or a minted token) when auth is on."""

    def __init__(self, api_key: str | None, *, enabled: bool, tokens: TokenMinter | None = None) -> None:
        if enabled and not api_key:
            raise ValueError("auth is on but no API key is configured")
        self.enabled = enabled
        self.tokens = tokens or TokenMinter()
        self._key_digest = hashlib.sha256(api_key.encode()).digest() if api_key else None

    def is_key(self, candidate: str) -> bool:
        """Constant time: both sides are hashed first, so neither content nor length leaks."""
        if self._key_digest is None:
            return False
        return hmac.compare_digest(hashlib.sha256(candidate.encode()).digest(), self._key_digest)

    def refusal(self, credential: str | None, *, tokens_ok: bool = True) -> str | None:
        """Why `credential` does not let its bearer in, or None when it does (always None with auth off)."""
        if not self.enabled:
            return None
        if not credential:
            return (
                "authentication required: send 'Authorization: Bearer <API key>', or from a browser the "
                f"WebSocket subprotocol '{KEY_SUBPROTOCOL}<client secret>' ({MINT_HINT})"
            )
        if self.is_key(credential):
            return None
        if tokens_ok and credential.startswith(TOKEN_PREFIX):
            return self.tokens.refusal(credential)
        if credential.startswith(TOKEN_PREFIX):
            return "a client secret cannot mint client secrets: use the API key"
        return "the API key is wrong: use the one in the server's configured variable or secrets file"


def build_authenticator(settings: Settings, env: Mapping[str, str] | None = None) -> Authenticator:
    """The server's authenticator; ConfigError when auth is required and no key is configured."""
    security = settings.security
    enabled = auth_required(security, settings.server.host)
    key = load_api_key(security, env)
    if enabled and key is None:
        why = "security.require_auth is always" if security.require_auth == "always" else "it binds beyond loopback"
        raise ConfigError(
            f"the server at {settings.server.host} needs an API key ({why}): set ${security.api_key_env} "
            "(e.g. to the output of `python -c 'import secrets; print(secrets.token_urlsafe(32))'`) "
            "or security.api_key_file; or bind 127.0.0.1"
        )
    return Authenticator(key, enabled=enabled)


def describe_auth(settings: Settings, auth: Authenticator) -> str:
    """One line for start-up: is a key required, and where it comes from."""
    security = settings.security
    if auth.enabled:
        source = f"${security.api_key_env}" if os.environ.get(security.api_key_env) else security.api_key_file
        return f"authentication on: API key from {source}; browsers use POST {MINT_PATH}"
    if is_loopback(settings.server.host):
        return "authentication off (loopback only); set security.require_auth: always to require a key"
    return "authentication OFF on a non-loopback address (security.require_auth: never): anyone can connect"


# --- reading credentials and origins from a request -----------------------------------------


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def offered_subprotocols(scope: Scope) -> list[str]:
    if scope["type"] != "websocket":
        return []
    return [str(p) for p in scope.get("subprotocols", [])]


def credential(scope: Scope) -> str | None:
    """The bearer token from the Authorization header, else the key subprotocol's value."""
    header = _header(scope, b"authorization") or ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for protocol in offered_subprotocols(scope):
        if protocol.startswith(KEY_SUBPROTOCOL):
            return protocol[len(KEY_SUBPROTOCOL) :]
    return None


def accept_subprotocol(scope: Scope) -> str | None:
    """The subprotocol to answer with: browsers fail a handshake that offered some and got none back.
    "realtime" when offered; else the first offered one that carries no key; else none."""
    offered = offered_subprotocols(scope)
    if "realtime" in offered:
        return "realtime"
    plain = [p for p in offered if not p.startswith(KEY_SUBPROTOCOL)]
    return plain[0] if plain else None


class OriginPolicy:
    """Browser origins allowed: the server's own, loopback ones, and `security.allowed_origins`."""

    def __init__(self, allowed: list[str], *, bound_to_loopback: bool) -> None:
        self.any = "*" in allowed
        self.allowed = frozenset(origin.rstrip("/").lower() for origin in allowed if origin != "*")
        self.bound_to_loopback = bound_to_loopback
        self.extra_hosts = frozenset((urlsplit(origin).hostname or "") for origin in self.allowed)

    def refusal(self, origin: str | None, host: str | None) -> str | None:
        """Why a request with these Origin and Host headers is refused, or None."""
        hostname = urlsplit(f"//{host}").hostname if host else None
        if self.bound_to_loopback and hostname and not (is_loopback(hostname) or hostname in self.extra_hosts):
            # A loopback server reached under another name: DNS rebinding, or a proxy not declared.
            return f"host {hostname!r} is not served here: use localhost, or add its origin to security.allowed_origins"
        if origin is None or self.any:
            return None
        origin = origin.rstrip("/").lower()
        same = host is not None and urlsplit(origin).netloc == host.lower()
        if same or origin in self.allowed or LOOPBACK_ORIGIN.match(origin):
            return None
        return f"origin {origin!r} is not allowed: add it to security.allowed_origins"

    def cors_options(self) -> dict[str, object]:
        """CORSMiddleware's settings for REST calls from other allowed origins."""
        return {
            "allow_origins": ["*"] if self.any else sorted(self.allowed),
            "allow_origin_regex": LOOPBACK_ORIGIN.pattern,
            "allow_methods": ["*"],
            "allow_headers": ["*"],
            "allow_credentials": False,  # credentials are bearer tokens, never cookies
        }


# --- enforcement ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    auth: Authenticator
    origins: OriginPolicy
    protect_metrics: bool

    def protects(self, path: str) -> bool:
        return path.startswith(("/api/", "/v1/")) or (self.protect_metrics and path == "/metrics")

    def refusal(self, scope: Scope) -> tuple[Literal["origin", "auth"], str] | None:
        why = self.origins.refusal(_header(scope, b"origin"), _header(scope, b"host"))
        if why is not None:
            return "origin", why
        if self.protects(scope["path"]):
            why = self.auth.refusal(credential(scope), tokens_ok=scope["path"] != MINT_PATH)
            if why is not None:
                return "auth", why
        return None


def build_gate(settings: Settings, env: Mapping[str, str] | None = None) -> Gate:
    security = settings.security
    origins = OriginPolicy(security.allowed_origins, bound_to_loopback=is_loopback(settings.server.host))
    return Gate(build_authenticator(settings, env), origins, security.protect_metrics)


class SecurityMiddleware:
    """Refuses HTTP requests (403 origin, 401 auth) and WebSocket handshakes (close 1008 with the reason)."""

    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refused = self.gate.refusal(scope)
        if refused is None:
            await self.app(scope, receive, send)
            return
        kind, why = refused
        client = scope.get("client") or ("?", 0)
        extra = {"event": "request_refused", "kind": kind, "path": scope["path"], "client": client[0]}
        log.warning("request refused", extra=extra)
        if scope["type"] == "websocket":
            await refuse_websocket(scope, receive, send, CLOSE_POLICY_VIOLATION, why)
            return
        status = 401 if kind == "auth" else 403
        headers = {"WWW-Authenticate": 'Bearer realm="voxloop"'} if status == 401 else None
        await JSONResponse({"detail": why}, status_code=status, headers=headers)(scope, receive, send)


async def refuse_websocket(scope: Scope, receive: Receive, send: Send, code: int, reason: str) -> None:
    """Accept, then close with `code` and `reason`: a refused handshake would hide the reason from browsers."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept", "subprotocol": accept_subprotocol(scope)})
    await send({"type": "websocket.close", "code": code, "reason": close_reason(reason)})


def close_reason(reason: str) -> str:
    """`reason` cut to the 123 bytes a close frame can carry."""
    return reason.encode()[:123].decode(errors="ignore")


async def require_auth(request: Request) -> None:
    """FastAPI dependency: 401 unless the request carries the API key or a valid client secret."""
    gate: Gate = request.app.state.gate
    why = gate.auth.refusal(credential(request.scope))
    if why is not None:
        raise HTTPException(401, why, headers={"WWW-Authenticate": 'Bearer realm="voxloop"'})


# --- POST /v1/realtime/client_secrets -------------------------------------------------------


class ExpiresAfter(BaseModel):
    anchor: Literal["created_at"] = "created_at"
    seconds: int = Field(ge=1, le=86400, description="lifetime; capped at security.token_ttl_s")


class ClientSecretRequest(BaseModel):
    expires_after: ExpiresAfter | None = None


class ClientSecret(BaseModel):
    value: str = Field(description=f"pass as the WebSocket subprotocol '{KEY_SUBPROTOCOL}<value>'")
    expires_at: int = Field(description="Unix time (s) after which the secret is refused")


router = APIRouter(tags=["auth"])


@router.post(MINT_PATH, response_model=ClientSecret, responses={401: {"description": "no or wrong API key"}})
async def client_secrets(request: Request, body: ClientSecretRequest | None = None) -> ClientSecret:
    """Mint a short-lived client secret for a browser (needs the API key itself, not another secret)."""
    gate: Gate = request.app.state.gate
    why = gate.auth.refusal(credential(request.scope), tokens_ok=False)
    if why is not None:
        raise HTTPException(401, why, headers={"WWW-Authenticate": 'Bearer realm="voxloop"'})
    settings: Settings = request.app.state.settings
    ttl = settings.security.token_ttl_s
    if body is not None and body.expires_after is not None:
        ttl = min(ttl, body.expires_after.seconds)
    value, expires_at = gate.auth.tokens.mint(ttl)
    log.info("client secret minted", extra={"event": "client_secret_minted", "ttl_s": ttl})
    return ClientSecret(value=value, expires_at=expires_at)
