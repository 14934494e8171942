"""The built-in pages with authentication on: a real `voxloop serve` with `require_auth: always`, real Chromium.

The pages ask for the API key in a form, use it only to mint short-lived client secrets
(POST /v1/realtime/client_secrets), and open the WebSocket, the WebRTC offer and REST calls with a secret.
Every request Chromium makes is recorded: the key must travel only in the mint's Authorization header,
and neither the key nor a secret may appear in any URL, in the console or in the server's log.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.servers import ServerProcess, running_server
from tests.integration.test_browser import CHROMIUM, TURN_TIMEOUT_MS, chromium_page, padded_utterance, words
from voxloop.pipeline.audio import write_wav

KEY = "vx-browser-key-8d1e6c0b7a2f4e93"
ENV = {"VOXLOOP_SECURITY__REQUIRE_AUTH": "always", "VOXLOOP_API_KEY": KEY}
MINT_PATH = "/v1/realtime/client_secrets"
SECRET_PROTOCOL = re.compile(r"^openai-insecure-api-key\.(ek_\S+)$")
FORM_MS = 15_000
CONNECT_MS = 30_000

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]

# Records the subprotocols each WebSocket is opened with (the only place a browser can put a credential).
RECORD_PROTOCOLS_JS = """
(() => {
  const Native = window.WebSocket;
  window.__wsProtocols = [];
  window.WebSocket = class extends Native {
    constructor(url, protocols) {
      window.__wsProtocols.push({ url: String(url), protocols: protocols === undefined ? null : [].concat(protocols) });
      super(url, protocols);
    }
  };
})();
"""


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("browser-auth") / "server.log", ENV) as process:
        yield process


@dataclass
class Traffic:
    """What Chromium sent: each request (url, method, Authorization), WebSocket URLs, console text."""

    requests: list[tuple[str, str, str]] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def watch(self, page: Any) -> None:
        page.on("request", lambda r: self.requests.append((r.url, r.method, r.all_headers().get("authorization", ""))))
        page.on("websocket", lambda ws: self.sockets.append(ws.url))
        page.on("console", lambda m: self.console.append(m.text))

    def bearers(self, path: str) -> list[str]:
        return [auth.removeprefix("Bearer ") for url, _, auth in self.requests if url.split("?")[0].endswith(path)]


def silent_mic(out: Path) -> Path:
    write_wav(out, np.zeros(16000, dtype=np.int16), 16000)  # the fake mic then repeats silence
    return out


def enter_key(page: Any, key: str, *, remember: bool = False) -> None:
    page.wait_for_selector("dialog#auth[open] #auth-key", timeout=FORM_MS)
    page.fill("#auth-key", key)
    if remember:
        page.check("#auth-remember")
    page.click("#auth-submit")


def unexpected(errors: list[str]) -> list[str]:
    """Console and page errors, less Chromium's own note of each 401 the pages met on purpose."""
    return [e for e in errors if "status of 401" not in e]


def check_no_leak(traffic: Traffic, secure: ServerProcess, secrets: set[str]) -> None:
    assert secrets, "no secret was seen"
    for url, _, _ in traffic.requests:
        assert KEY not in url and not any(s in url for s in secrets), url
    for text in traffic.console:
        assert KEY not in text and not any(s in text for s in secrets), text
    log = secure.log()
    assert KEY not in log and not any(s in log for s in secrets)
    # The key went only to the mint endpoint; everything else carried a secret (or nothing).
    for url, method, auth in traffic.requests:
        if KEY in auth:
            assert url.endswith(MINT_PATH) and method == "POST", url


def test_conversation_page_asks_for_the_key_refuses_a_wrong_one_and_then_talks(
    secure: ServerProcess, eval_dir: Path, manifest: list[dict[str, str]], tmp_path: Path
) -> None:
    wav, reference = padded_utterance(eval_dir, manifest, tmp_path / "mic.wav")
    traffic = Traffic()
    with chromium_page(mic_wav=wav) as (page, errors):
        traffic.watch(page)
        page.add_init_script(RECORD_PROTOCOLS_JS)
        page.goto(secure.url + "/?transport=websocket")
        page.wait_for_selector("dialog#auth[open]", timeout=FORM_MS)  # asked at once: the voice list needs it
        assert page.is_hidden("#auth-error")

        enter_key(page, "not-the-key")
        page.wait_for_selector("dialog#auth[open] #auth-error:not([hidden])", timeout=FORM_MS)
        wrong = page.inner_text("#auth-error")
        stored_after_wrong = page.evaluate("[sessionStorage.length, localStorage.getItem('voxloop.apiKey')]")

        enter_key(page, KEY)
        page.wait_for_selector("dialog#auth:not([open])", state="attached", timeout=FORM_MS)
        page.wait_for_function("window.voxloop.voices.list.length > 0", timeout=FORM_MS)  # REST with a secret
        page.click("#toggle")
        user = page.wait_for_selector('.msg[data-role="user"] .text', timeout=TURN_TIMEOUT_MS)
        heard = user.inner_text()
        page.wait_for_function(
            "document.querySelector('.msg[data-role=\"assistant\"] .text')?.textContent.trim().length > 0",
            timeout=TURN_TIMEOUT_MS,
        )
        page.wait_for_function("window.voxloop.state === 'listening'", timeout=TURN_TIMEOUT_MS)

        page.click("#toggle")  # stop, and start again: a reconnect mints a new secret
        page.click("#toggle")
        page.wait_for_function("window.__wsProtocols.length === 2", timeout=CONNECT_MS)
        page.wait_for_function("window.voxloop.state === 'listening'", timeout=CONNECT_MS)
        state = page.evaluate("window.voxloop")
        opened = page.evaluate("window.__wsProtocols")
        storage = page.evaluate("[sessionStorage.getItem('voxloop.apiKey'), localStorage.getItem('voxloop.apiKey')]")
        forget_shown = page.is_visible("#forget-key")

    assert "refused" in wrong and "API key is wrong" in wrong, wrong
    assert stored_after_wrong == [0, None], stored_after_wrong  # a refused key is not kept
    assert storage == [KEY, None], "without 'remember' the key stays in this tab's sessionStorage only"
    assert forget_shown
    similarity = difflib.SequenceMatcher(None, words(heard), words(reference)).ratio()
    assert similarity >= 0.75, f"the page shows {heard!r}, expected about {reference!r}"
    assert "listening" in state["stateHistory"] and "speaking" in state["stateHistory"], state["stateHistory"]
    assert state["auth"]["required"] is True and state["auth"]["prompts"] == 2, state["auth"]
    assert not state["errors"], state["errors"]

    # Each connect offered ["realtime", "openai-insecure-api-key.<a fresh secret>"] on the plain URL.
    assert [o["url"] for o in opened] == [secure.ws_url] * 2 == traffic.sockets, (opened, traffic.sockets)
    ws_secrets = []
    for o in opened:
        assert o["protocols"][0] == "realtime" and len(o["protocols"]) == 2, o
        match = SECRET_PROTOCOL.match(o["protocols"][1])
        assert match, o["protocols"]
        ws_secrets.append(match.group(1))
    assert ws_secrets[0] != ws_secrets[1]
    mints = traffic.bearers(MINT_PATH)
    assert mints[0] == "" and "not-the-key" in mints and mints.count(KEY) >= 3, mints  # probe, wrong, then key
    voices = traffic.bearers("/api/voices")
    assert voices and all(b.startswith("ek_") for b in voices), voices
    check_no_leak(traffic, secure, set(ws_secrets) | set(voices))
    assert not unexpected(errors), errors


def test_kiosk_remembers_the_key_across_a_reload(secure: ServerProcess, tmp_path: Path) -> None:
    traffic = Traffic()
    with chromium_page(mic_wav=silent_mic(tmp_path / "silence.wav")) as (page, errors):
        traffic.watch(page)
        page.goto(secure.url + "/kiosk")
        enter_key(page, KEY, remember=True)
        page.wait_for_function("window.voxloop.mode !== null", timeout=CONNECT_MS)  # session.created arrived
        page.reload()
        page.wait_for_function("window.voxloop.mode !== null", timeout=CONNECT_MS)
        after = page.evaluate("window.voxloop")
        dialog_open = page.evaluate("document.querySelector('dialog#auth')?.open ?? false")
        storage = page.evaluate("[sessionStorage.getItem('voxloop.apiKey'), localStorage.getItem('voxloop.apiKey')]")

    assert storage == [None, KEY], "'Remember on this device' keeps the key in localStorage only"
    assert after["auth"]["prompts"] == 0 and not dialog_open, after["auth"]  # no form after the reload
    assert after["auth"]["remembered"] and after["auth"]["mints"] >= 1, after["auth"]
    assert after["mode"] == "conversation" and after["reconnects"] == 0, after  # connected at the first try
    assert len(traffic.sockets) == 2 and set(traffic.sockets) == {secure.ws_url}, traffic.sockets
    config = traffic.bearers("/api/config")
    assert len(config) == 2 and all(b.startswith("ek_") for b in config), config  # the wake-word list, with a secret
    check_no_leak(traffic, secure, set(config))
    assert not unexpected(errors), errors


def test_webrtc_offer_carries_a_secret(secure: ServerProcess, tmp_path: Path) -> None:
    traffic = Traffic()
    with chromium_page(mic_wav=silent_mic(tmp_path / "silence.wav")) as (page, errors):
        traffic.watch(page)
        page.goto(secure.url + "/?transport=webrtc")
        enter_key(page, KEY)
        page.click("#toggle")
        page.wait_for_function("window.voxloop.state === 'listening'", timeout=CONNECT_MS)
        state = page.evaluate("window.voxloop")
        page.click("#toggle")

    calls = [(b, m) for (u, m, b) in traffic.requests if u.endswith("/v1/realtime/calls")]
    assert calls and all(m == "POST" and b.startswith("Bearer ek_") for b, m in calls), calls
    assert state["transport"] == "webrtc" and not state["errors"], state
    check_no_leak(traffic, secure, {b.removeprefix("Bearer ") for b, _ in calls})
    assert not unexpected(errors), errors
