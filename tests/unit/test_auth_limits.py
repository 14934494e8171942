"""Security and limits logic on virtual clocks: client secrets, the API key check, origins, the rate bucket."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

import pytest

from voxloop.pipeline.config import LimitsSettings, SecuritySettings, Settings, validate
from voxloop.pipeline.errors import ConfigError
from voxloop.server.events import ProtocolError
from voxloop.server.limits import InboundLimits, PolicyViolation, TokenBucket, sessions_full
from voxloop.server.security import (
    Authenticator,
    OriginPolicy,
    TokenMinter,
    accept_subprotocol,
    auth_required,
    build_authenticator,
    credential,
    is_loopback,
    load_api_key,
)

KEY = "test-key-0123456789abcdef"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings(host: str = "127.0.0.1", **security: Any) -> Settings:
    return validate({"server": {"host": host}, "security": security})


# -- client secrets ---------------------------------------------------------------------------


def test_a_minted_token_is_accepted_until_it_expires() -> None:
    clock = Clock()
    minter = TokenMinter(clock=clock)
    token, expires_at = minter.mint(60)
    assert expires_at == 1_000_060 and token.startswith("ek_")
    assert minter.refusal(token) is None
    clock.now += 59
    assert minter.refusal(token) is None
    clock.now += 1
    assert "expired" in (minter.refusal(token) or "")


def test_each_token_is_new_and_altered_or_foreign_tokens_are_refused() -> None:
    minter = TokenMinter(clock=Clock())
    token, _ = minter.mint(60)
    assert token != minter.mint(60)[0]
    expires, nonce, signature = token.removeprefix("ek_").split(".")
    longer = f"ek_{int(expires) + 3600}.{nonce}.{signature}"  # a later expiry with the old signature
    for bad in (
        longer,
        token[:-1] + ("0" if token[-1] != "0" else "1"),
        "ek_garbage",
        "ek_",
        TokenMinter().mint(60)[0],
    ):
        assert "not valid" in (minter.refusal(bad) or ""), bad


# -- the API key ------------------------------------------------------------------------------


def test_the_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("voxloop.server.security.hmac.compare_digest", spy)
    auth = Authenticator(KEY, enabled=True)
    assert auth.refusal(KEY) is None
    assert "wrong" in (auth.refusal(KEY + "x") or "")
    assert "wrong" in (auth.refusal("t") or "")
    assert len(calls) == 3
    assert all(len(a) == len(b) == 32 for a, b in calls)  # digests: the key's length does not leak either


def test_credentials_and_tokens() -> None:
    auth = Authenticator(KEY, enabled=True, tokens=TokenMinter(clock=Clock()))
    token, _ = auth.tokens.mint(60)
    assert "authentication required" in (auth.refusal(None) or "")
    assert "Bearer" in (auth.refusal("") or "")
    assert auth.refusal(token) is None
    assert "cannot mint" in (auth.refusal(token, tokens_ok=False) or "")
    assert auth.refusal(KEY, tokens_ok=False) is None
    assert Authenticator(None, enabled=False).refusal(None) is None
    with pytest.raises(ValueError, match="no API key"):
        Authenticator(None, enabled=True)


def test_auth_is_required_beyond_loopback_and_the_server_refuses_to_start_without_a_key() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")
    assert not auth_required(SecuritySettings(), "127.0.0.1")
    assert auth_required(SecuritySettings(), "0.0.0.0")
    assert auth_required(SecuritySettings(require_auth="always"), "127.0.0.1")
    assert not auth_required(SecuritySettings(require_auth="never"), "0.0.0.0")
    with pytest.raises(ConfigError, match=r"0\.0\.0\.0 needs an API key .*\$VOXLOOP_API_KEY"):
        build_authenticator(settings("0.0.0.0"), env={})
    with pytest.raises(ConfigError, match="require_auth is always"):
        build_authenticator(settings(require_auth="always"), env={})
    auth = build_authenticator(settings("0.0.0.0"), env={"VOXLOOP_API_KEY": KEY})
    assert auth.enabled and auth.refusal(KEY) is None
    assert not build_authenticator(settings(), env={}).enabled


def test_the_key_comes_from_the_environment_or_a_secrets_file(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text(KEY + "\n")
    with_file = SecuritySettings(api_key_file=secret, api_key_env="MY_KEY")
    assert load_api_key(with_file, env={}) == KEY
    assert load_api_key(with_file, env={"MY_KEY": "from-env"}) == "from-env"
    assert load_api_key(SecuritySettings(), env={}) is None
    with pytest.raises(ConfigError, match="cannot be read"):
        load_api_key(SecuritySettings(api_key_file=tmp_path / "missing"), env={})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_api_key(SecuritySettings(api_key_file=tmp_path / "empty"), env={})


def test_a_key_put_in_the_config_by_mistake_is_not_echoed_in_the_error() -> None:
    with pytest.raises(ConfigError) as error:
        validate({"security": {"api_key": "sk-very-secret"}})
    assert "sk-very-secret" not in str(error.value) and "security.api_key: unknown setting" in str(error.value)


# -- reading a handshake ----------------------------------------------------------------------


def scope(headers: dict[str, str], subprotocols: list[str] | None = None) -> dict[str, Any]:
    kind = "websocket" if subprotocols is not None else "http"
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return {"type": kind, "path": "/v1/realtime", "headers": raw, "subprotocols": subprotocols or []}


def test_the_credential_comes_from_a_bearer_header_or_the_key_subprotocol() -> None:
    assert credential(scope({"Authorization": f"Bearer {KEY}"})) == KEY
    assert credential(scope({"Authorization": f"bearer  {KEY} "})) == KEY
    assert credential(scope({"Authorization": f"Basic {KEY}"})) is None
    browser = scope({}, ["realtime", f"openai-insecure-api-key.{KEY}"])
    assert credential(browser) == KEY
    assert accept_subprotocol(browser) == "realtime"
    assert accept_subprotocol(scope({}, [f"openai-insecure-api-key.{KEY}"])) is None  # never echo the key
    assert accept_subprotocol(scope({}, [])) is None


def test_origins_same_origin_loopback_and_configured_are_allowed() -> None:
    policy = OriginPolicy(["https://voice.example.org"], bound_to_loopback=False)
    assert policy.refusal(None, "example.net:8765") is None  # programs send no Origin
    assert policy.refusal("http://example.net:8765", "example.net:8765") is None  # same origin
    assert policy.refusal("http://localhost:3000", "example.net:8765") is None
    assert policy.refusal("http://127.0.0.1:5173", "example.net:8765") is None
    assert policy.refusal("https://voice.example.org/", "example.net:8765") is None
    refused = policy.refusal("https://evil.example.com", "example.net:8765") or ""
    assert "evil.example.com" in refused and "security.allowed_origins" in refused
    assert policy.refusal("http://localhost.evil.com", "example.net:8765") is not None
    assert OriginPolicy(["*"], bound_to_loopback=False).refusal("https://any.where", "h:1") is None


def test_a_loopback_server_refuses_other_host_names_dns_rebinding() -> None:
    policy = OriginPolicy([], bound_to_loopback=True)
    assert policy.refusal(None, "127.0.0.1:8765") is None
    assert policy.refusal(None, "localhost:8765") is None
    assert policy.refusal(None, "[::1]:8765") is None
    assert "rebind.example.com" in (policy.refusal("http://rebind.example.com:8765", "rebind.example.com:8765") or "")
    proxied = OriginPolicy(["https://voice.example.org"], bound_to_loopback=True)
    assert proxied.refusal("https://voice.example.org", "voice.example.org") is None


# -- limits -----------------------------------------------------------------------------------


def test_token_bucket_on_a_virtual_clock() -> None:
    bucket = TokenBucket(rate=10.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.05)  # half a token
    assert bucket.take(0.1)
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]  # refills only up to the burst


def limits(**overrides: Any) -> LimitsSettings:
    return LimitsSettings(**{"events_per_s": 10.0, "event_burst": 5, "abuse_close_s": 3.0, **overrides})


def test_a_flood_is_told_once_a_second_then_closed_while_a_pause_forgives() -> None:
    clock = Clock(0.0)
    inbound = InboundLimits(limits(), clock)
    assert all(inbound.admit("{}") for _ in range(5))
    with pytest.raises(ProtocolError) as told:
        inbound.admit("{}")
    assert told.value.code == "rate_limited" and "10 messages per second" in told.value.message
    assert not isinstance(told.value, PolicyViolation)
    assert inbound.admit("{}") is False  # dropped quietly within the second
    clock.now = 2.0  # a quiet pause: tokens back, the flood is over
    assert inbound.admit("{}") is True
    closed_at = flood(inbound, clock, per_s=100, until=10.0)  # now flood at 100 messages per second
    assert closed_at is not None and 2.9 <= closed_at - 2.0 <= 3.2  # closed after abuse_close_s of flooding


def flood(inbound: InboundLimits, clock: Clock, *, per_s: float, until: float) -> float | None:
    """Send at `per_s` until closed (returns when) or until `until`."""
    while clock.now < until:
        clock.now += 1 / per_s
        try:
            inbound.admit("{}")
        except PolicyViolation:
            return clock.now
        except ProtocolError as error:
            if error.code != "rate_limited":
                raise
    return None


def test_a_client_at_the_rate_limit_is_never_closed() -> None:
    clock = Clock(0.0)
    inbound = InboundLimits(limits(), clock)
    assert flood(inbound, clock, per_s=10.5, until=60.0) is None  # just over: a few drops, then calm again
    assert flood(inbound, clock, per_s=9.5, until=120.0) is None
    assert inbound.dropped < 60


def test_big_messages_and_full_turn_buffers_are_refused_with_the_limit_named() -> None:
    inbound = InboundLimits(limits(max_message_bytes=1024, max_turn_audio_s=2.0), Clock())
    assert inbound.admit("x" * 1024) and inbound.admit(b"\x00" * 1024)
    for message in ("x" * 1025, b"\x00" * 1025, "é" * 600):
        with pytest.raises(ProtocolError, match=r"limits\.max_message_bytes") as error:
            inbound.admit(message)
        assert error.value.code == "message_too_big"
    inbound.check_turn_audio(32000, 16000)
    with pytest.raises(ProtocolError, match="commit or clear") as full:
        inbound.check_turn_audio(32001, 16000)
    assert full.value.code == "input_audio_buffer_full"


def test_sessions_full() -> None:
    assert sessions_full(1, LimitsSettings(max_sessions=2)) is None
    assert "try again later" in (sessions_full(2, LimitsSettings(max_sessions=2)) or "")
