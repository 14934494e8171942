"""The browser client over WebRTC in real headless Chromium, its microphone fed from a real recording.

The page's default transport is WebRTC: the fake microphone's track goes to the server as Opus, the
reply comes back on the server's track and plays in an <audio> element, and the events (the same as
over WebSocket) arrive on the `oai-events` data channel.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from tests.integration.conftest import ServerProcess
from tests.integration.test_browser import CHROMIUM, TURN_TIMEOUT_MS, chromium_page, padded_utterance, words

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]


# The loudest sample of the reply stream over 1.5 s, read with an AnalyserNode beside the <audio> element.
REPLY_PEAK_JS = """
async () => {
  const stream = window.voxloopPlayer.srcObject;
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  ctx.createMediaStreamSource(stream).connect(analyser);
  const buffer = new Float32Array(analyser.fftSize);
  let peak = 0;
  for (let i = 0; i < 30; i++) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    analyser.getFloatTimeDomainData(buffer);
    for (const value of buffer) peak = Math.max(peak, Math.abs(value));
  }
  await ctx.close();
  return peak;
}
"""


def test_hands_free_turn_over_webrtc(
    server: ServerProcess, eval_dir: Path, manifest: list[dict[str, str]], tmp_path: Path
) -> None:
    wav, reference = padded_utterance(eval_dir, manifest, tmp_path / "mic.wav")
    with chromium_page(mic_wav=wav) as (page, errors):
        page.goto(server.url + "/")  # no ?transport: WebRTC is the default
        assert page.input_value("#transport") == "webrtc"
        page.click("#toggle")

        user = page.wait_for_selector('.msg[data-role="user"] .text', timeout=TURN_TIMEOUT_MS)
        heard = user.inner_text()
        page.wait_for_selector('.msg[data-role="assistant"] .trace .v2v', timeout=TURN_TIMEOUT_MS)
        page.wait_for_function("window.voxloop.playbackStarted.length > 0", timeout=TURN_TIMEOUT_MS)
        peak = page.evaluate(REPLY_PEAK_JS)  # what the <audio> element is playing, while the reply plays
        page.wait_for_function("!window.voxloop.playing", timeout=TURN_TIMEOUT_MS)  # the track played it out
        state = page.evaluate("window.voxloop")
        page.screenshot(path=str(tmp_path / "webrtc.png"))
        print(f"screenshot: {tmp_path / 'webrtc.png'}")

    similarity = difflib.SequenceMatcher(None, words(heard), words(reference)).ratio()
    assert similarity >= 0.75, f"the page shows {heard!r}, expected about {reference!r}"
    assert state["transport"] == "webrtc" and state["url"].endswith("/v1/realtime/calls"), state["url"]
    assert state["sentFrames"] == 0, "over WebRTC no audio may travel as input_audio_buffer.append events"
    assistant = [m for m in state["messages"] if m["role"] == "assistant"]
    assert assistant and assistant[0]["text"].strip(), state["messages"]
    turn = state["turns"][0]
    assert 0 < turn["voice_to_voice_ms"] < 60_000, turn
    assert "first_audio_sent" in turn["marks_ms"], turn
    assert not state["errors"], state["errors"]
    assert not errors, errors
    assert peak > 0.02, f"the reply track played silence in the page (peak {peak:.4f})"
    print(f"over WebRTC: heard {heard!r}, voice-to-voice {turn['voice_to_voice_ms']:.0f} ms")
