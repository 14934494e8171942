"""The kiosk page's recovery paths in headless Chromium, against a real kiosk server (issue 5).

- The server goes away: the page shows it is reconnecting; a new server on the same port comes
  up and the page reconnects by itself (no click), falls asleep again, and still wakes and answers.
- The microphone goes away (its track ends, getUserMedia then fails): the page shows the problem,
  retries, and captures again once the device returns (a `devicechange`).
- At connect the server sends session.created first, then `voxloop.state: asleep` once.

The microphone is tests/integration/test_browser.py's cued WebAudio mic, so speech can be played
into the page on cue at any point (the fake file device plays once, from page load).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import ServerProcess, free_port
from tests.integration.test_browser import CHROMIUM, CUED_MIC_JS, chromium_page, clip_samples
from tests.integration.test_kiosk import WAKE_AND_COMMAND
from voxloop.client import RealtimeClient

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]

SR = 16000
TURN_MS = 60_000  # a spoken turn takes ~2-4 s here; generous for a busy 2-core machine
SETTLE_MS = 20_000  # page load, microphone start, (re)connect
KIOSK_ENV = {
    "VOXLOOP_MODE": "kiosk",
    "VOXLOOP_WAKE__WORDS": "[{name: hey_jarvis}]",
    "VOXLOOP_KIOSK__FOLLOW_UP_S": "1.0",
}

# Wraps the cued mic: keeps the last stream for the test, and while `__micGone` is set answers
# like a machine with no microphone plugged in.
MIC_THAT_CAN_GO_JS = """
(() => {
  const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  window.__micGone = false;
  window.__micAttemptsWhileGone = 0;
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    if (window.__micGone) {
      window.__micAttemptsWhileGone += 1;
      throw new DOMException("Requested device not found", "NotFoundError");
    }
    window.__micStream = await open(constraints);
    return window.__micStream;
  };
})();
"""

ASLEEP = "window.voxloop.state === 'asleep'"


class KioskServers:
    """One kiosk server at a time on a fixed port: a test may stop it and start another there."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.started = 0
        self.current = self.start()

    def start(self) -> ServerProcess:
        self.started += 1
        self.current = ServerProcess(self.port, self.log_dir / f"server{self.started}.log", KIOSK_ENV)
        self.current.wait_ready()
        return self.current

    def stop(self) -> None:
        self.current.stop()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KioskServers]:
    holder = KioskServers(tmp_path_factory.mktemp("kiosk-recovery"))
    try:
        yield holder
    finally:
        holder.stop()


@pytest.fixture(scope="module")
def wake_and_command(eval_dir: Path, manifest: list[dict[str, str]]) -> list[Any]:
    """'Hey jarvis', half a second of silence, 'go forward ten meters', as [samples, rate] for the cued mic."""
    (wake, rate), (command, rate2) = (clip_samples(eval_dir, manifest, clip) for clip in WAKE_AND_COMMAND)
    assert rate == rate2 == SR
    return [wake + [0] * (SR // 2) + command + [0] * (SR // 2), SR]


async def test_the_server_says_asleep_once_after_session_created(servers: KioskServers) -> None:
    async with await RealtimeClient.connect(servers.current.ws_url) as client:
        await client.update_session({"audio": {"input": {"format": {"type": "audio/pcm", "rate": SR}}}})
        await client.stream(np.zeros(SR // 2, np.int16), rate=SR)  # half a second more, at a microphone's pace
        kinds = [e["type"] for e in client.events]
    assert kinds[0] == "session.created", kinds
    assert [e["state"] for e in client.of_type("voxloop.state")] == ["asleep"], kinds
    assert kinds.index("voxloop.state") > 0


def speak_and_wait_for_the_answer(page: Any, speech: list[Any]) -> dict[str, Any]:
    """Play the wake word and command into the page's mic; return the page state once asleep again,
    having checked that the turn went round and the screen shows the whole exchange."""
    before, exchanges = page.evaluate("[window.voxloop.stateHistory.length, window.voxloop.exchanges.length]")
    page.evaluate("([samples, rate]) => window.__cuedMic.play(samples, rate)", speech)
    page.wait_for_function(
        f"window.voxloop.stateHistory.slice({before}).includes('speaking') && {ASLEEP}", timeout=TURN_MS
    )
    state: dict[str, Any] = page.evaluate("window.voxloop")
    turn = state["stateHistory"][before:]
    for step in ("listening", "thinking", "speaking"):
        assert step in turn, turn
    assert len(state["exchanges"]) == exchanges + 1, state["exchanges"]  # one exchange, however many deltas
    exchange = state["exchanges"][-1]
    assert "forward" in exchange["user"].lower() and exchange["assistant"].strip(), exchange
    assert page.inner_text("#user-said") == exchange["user"]
    assert page.inner_text("#assistant-said") == exchange["assistant"].strip(), exchange
    return state


def test_the_page_reconnects_by_itself_after_a_server_restart(
    servers: KioskServers, wake_and_command: list[Any], tmp_path: Path
) -> None:
    with chromium_page() as (page, errors):
        page.add_init_script(CUED_MIC_JS)
        page.goto(servers.current.url + "/kiosk")
        page.wait_for_function(ASLEEP, timeout=SETTLE_MS)
        assert page.inner_text("#state") == "Asleep" and page.is_hidden("#problem")

        servers.stop()
        page.wait_for_function("window.voxloop.state === 'offline'", timeout=SETTLE_MS)
        shown = {part: page.inner_text(f"#{part}") for part in ("state", "hint", "problem")}
        offline_color = page.eval_on_selector("#state", "el => getComputedStyle(el).color")
        page.screenshot(path=str(tmp_path / "kiosk-offline.png"))
        frames_down = page.evaluate("window.voxloop.sentFrames")

        servers.start()  # a new process on the same port; nobody touches the page
        page.wait_for_function(ASLEEP, timeout=SETTLE_MS + 15_000)  # the backoff may wait up to 10 s
        assert page.inner_text("#state") == "Asleep" and page.is_hidden("#problem")
        page.wait_for_function(f"window.voxloop.sentFrames > {frames_down + 25}", timeout=SETTLE_MS)
        state = speak_and_wait_for_the_answer(page, wake_and_command)

    print(f"\noffline page showed {shown}; reconnects {state['reconnects']}; states {state['stateHistory']}")
    assert shown["state"] == "Offline" and "Reconnecting" in shown["hint"], shown
    assert "server" in shown["problem"] and "retrying in" in shown["problem"], shown
    assert offline_color == "rgb(250, 82, 82)", offline_color  # drawn in the problem colour
    assert state["reconnects"] >= 1 and state["micOpenings"] == 1, state
    assert state["wakeWords"] and state["wakeWords"][-1]["word"] == "hey_jarvis", state["wakeWords"]
    codes = [e["code"] for e in state["errors"]]  # the server's "shutting down", then each retry
    assert "connection_lost" in codes and set(codes) <= {"session_closed", "connection_lost"}, state["errors"]
    assert not [e for e in errors if "ERR_CONNECTION_REFUSED" not in e], errors  # Chromium logs each refused retry


def sent_frames(page: Any) -> int:
    frames: int = page.evaluate("window.voxloop.sentFrames")
    return frames


def test_the_page_recovers_when_the_microphone_goes_and_returns(
    servers: KioskServers, wake_and_command: list[Any], tmp_path: Path
) -> None:
    with chromium_page() as (page, errors):
        page.add_init_script(CUED_MIC_JS + MIC_THAT_CAN_GO_JS)  # one script: the order of two is not defined
        page.goto(servers.current.url + "/kiosk")
        page.wait_for_function(f"{ASLEEP} && window.voxloop.sentFrames > 25", timeout=SETTLE_MS)

        # Unplugged: the capture track ends, and opening the microphone again finds none.
        page.evaluate(
            "window.__micGone = true; window.__micStream.getAudioTracks()[0].dispatchEvent(new Event('ended'))"
        )
        page.wait_for_function("window.voxloop.state === 'no-microphone'", timeout=SETTLE_MS)
        shown_lost = page.inner_text("#problem")
        page.wait_for_function("window.__micAttemptsWhileGone >= 2", timeout=SETTLE_MS)  # it keeps retrying
        shown = {part: page.inner_text(f"#{part}") for part in ("state", "hint", "problem")}
        page.screenshot(path=str(tmp_path / "kiosk-no-microphone.png"))
        gone = sent_frames(page)
        page.wait_for_timeout(600)
        gone_later = sent_frames(page)

        # Plugged back in: the browser fires devicechange, and the page captures again.
        page.evaluate("window.__micGone = false; navigator.mediaDevices.dispatchEvent(new Event('devicechange'))")
        page.wait_for_function(f"{ASLEEP} && window.voxloop.sentFrames > {gone_later + 25}", timeout=SETTLE_MS)
        assert page.is_hidden("#problem")
        state = speak_and_wait_for_the_answer(page, wake_and_command)
        attempts = page.evaluate("window.__micAttemptsWhileGone")

    print(f"\nmic gone: {shown}; attempts while gone {attempts}; frames {gone} → {gone_later}; mic {state}")
    assert "went away" in shown_lost, shown_lost
    assert shown["state"] == "No microphone" and "Waiting for the microphone" in shown["hint"], shown
    assert "No microphone found" in shown["problem"], shown
    assert gone_later == gone, (gone, gone_later)  # nothing captured while the device is away
    assert state["micLosses"] == 1 and state["micOpenings"] == 2 and state["micFailures"] == attempts + 1, state
    codes = {e["code"] for e in state["errors"]}
    assert codes == {"mic_lost", "mic_missing"}, state["errors"]
    assert not errors, errors


def test_the_microphone_starts_by_itself_once_permission_is_granted(servers: KioskServers) -> None:
    with chromium_page(grant_mic=False) as (page, errors):  # Chromium's fake device, not yet allowed
        page.goto(servers.current.url + "/kiosk")
        page.wait_for_function("window.voxloop.state === 'no-microphone'", timeout=SETTLE_MS)
        shown = {part: page.inner_text(f"#{part}") for part in ("state", "problem")}
        frames_blocked = sent_frames(page)
        page.context.grant_permissions(["microphone"])  # what a person does once in the address bar
        page.wait_for_function(f"{ASLEEP} && window.voxloop.sentFrames > {frames_blocked + 25}", timeout=SETTLE_MS)
        state = page.evaluate("window.voxloop")
        problem_hidden = page.is_hidden("#problem")

    print(f"\nblocked: {shown}; then {state['micOpenings']} opening, {state['sentFrames']} frames sent")
    assert shown["state"] == "No microphone" and "Microphone blocked" in shown["problem"], shown
    assert frames_blocked == 0 and state["micOpenings"] == 1 and problem_hidden, state
    assert [e["code"] for e in state["errors"]][:1] == ["mic_denied"], state["errors"]
    assert not errors, errors
