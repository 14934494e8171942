// voxloop hands-free client: the start/stop button, the realtime protocol, barge-in and truncation.
import { AudioEngine, WIRE_RATE } from "./audio.js";
import { auth } from "./auth.js";
import { decodePcm16, encodePcm16 } from "./pcm.js";
import { ReplyPlayback, truncateEvent } from "./replies.js";
import { RtcConnection, callsUrl, rtcAvailable } from "./rtc.js";
import { Connection, realtimeUrl } from "./socket.js";
import { View } from "./view.js";
import { VoicePanel } from "./voices.js";

// WebRTC by default where the browser has it (its echo cancellation works on WebRTC playback);
// ?transport=websocket|webrtc or the Transport select picks one.
const transportSelect = document.getElementById("transport");
const asked = new URLSearchParams(window.location.search).get("transport");
const TRANSPORTS = rtcAvailable() ? ["webrtc", "websocket"] : ["websocket"];
const rtcPlayer = new Audio(); // the reply track plays here over WebRTC
rtcPlayer.autoplay = true;
window.voxloopPlayer = rtcPlayer; // for people and tests: the reply stream over WebRTC

function transportUrl(transport) {
  return transport === "webrtc" ? callsUrl(window.location) : realtimeUrl(window.location);
}

// A little state for people and tests to look at (window.voxloop in the devtools console).
const shared = (window.voxloop = {
  transport: TRANSPORTS.includes(asked) ? asked : TRANSPORTS[0],
  state: "off", // the pill: off | starting | connecting | reconnecting | asleep | listening | thinking | speaking
  stateHistory: [],
  messages: [], // {role, itemId, text, interrupted}
  turns: [], // voxloop.trace payloads
  playedSamples: 0, // reply frames the playback worklet actually played, at the context's rate
  playedMs: {}, // assistant item id -> ms of its audio actually played
  playing: false,
  playbackStarted: [], // response ids reported with voxloop.playback.started
  bargeIns: [], // {reason, itemId, playedMs, droppedFrames}
  truncations: [], // conversation.item.truncate events sent
  truncated: [], // the server's conversation.item.truncated answers
  reconnects: [], // {attempt, delayMs, everOpened, code}
  errors: [], // {code, message}
  auth: auth.state, // {required, mints, prompts, refusals, remembered}: never the key or a secret
  sentFrames: 0,
  sampleRate: null,
  micRate: null,
  url: null,
});
shared.url = transportUrl(shared.transport);
if (transportSelect) {
  transportSelect.value = shared.transport;
  for (const option of transportSelect.options) option.disabled = !TRANSPORTS.includes(option.value);
  transportSelect.addEventListener("change", () => {
    shared.transport = transportSelect.value; // takes effect at the next Start
    shared.url = transportUrl(shared.transport);
  });
}

const view = new View();
auth.bindForget(document.getElementById("forget-key"));
// The voice replies speak with: sent with the session's settings, and again whenever it is changed.
const voices = new VoicePanel({ onChange: (voice) => connection?.send(voiceUpdate(voice)) });
shared.voices = voices.state;
voices.refresh();

function voiceUpdate(voice) {
  return { type: "session.update", session: { type: "realtime", audio: { output: { voice } } } };
}
let audio = null;
let connection = null;
let running = false;
const assistantNodes = new Map(); // itemId -> <li>
let replies = new ReplyPlayback();
let lastDoneItem = null;

function setState(state) {
  shared.state = state;
  shared.stateHistory.push(state);
  view.setState(state);
}

function showError(code, message) {
  shared.errors.push({ code, message });
  view.showError(code, message);
}

// -- start / stop ------------------------------------------------------------------------------

async function start() {
  running = true;
  view.clearError();
  view.setButton("starting");
  setState("starting");
  audio = new AudioEngine({ onFrame: sendFrame, onLevel: (rms) => view.setLevel(rms), onPlayback });
  try {
    await audio.start();
  } catch (error) {
    await stop();
    showError(error.kind || "audio_error", error.message || String(error));
    return;
  }
  shared.sampleRate = audio.sampleRate;
  shared.micRate = audio.micRate;
  view.setButton("stop");
  setState("connecting");
  view.setStatus(`Connecting to ${shared.url}…`);
  if (transportSelect) transportSelect.disabled = true;
  const handlers = { onOpen, onEvent, onDown };
  connection =
    shared.transport === "webrtc"
      ? new RtcConnection(shared.url, handlers, { stream: audio.stream, player: rtcPlayer }, { auth })
      : new Connection(shared.url, handlers, { auth });
  connection.start();
}

async function stop() {
  running = false;
  connection?.stop();
  connection = null;
  const engine = audio;
  audio = null;
  await engine?.stop();
  shared.playing = false;
  if (transportSelect) transportSelect.disabled = false;
  view.setButton("start");
  setState("off");
  view.setLevel(0);
  view.setStatus("Stopped. Press Start to talk again.");
}

view.button.addEventListener("click", () => (running ? stop() : start()));

// -- the socket --------------------------------------------------------------------------------

function onOpen() {
  connection.send({
    type: "session.update",
    session: {
      type: "realtime",
      audio: {
        input: { format: { type: "audio/pcm", rate: WIRE_RATE } },
        output: { format: { type: "audio/pcm", rate: WIRE_RATE } },
      },
    },
  });
  if (voices.selected) connection.send(voiceUpdate(voices.selected)); // apart: a stale name must not undo the rates
}

function onDown({ everOpened, code, reason, retryInMs, attempt }) {
  audio?.flush();
  replies = new ReplyPlayback();
  shared.reconnects.push({ attempt, delayMs: retryInMs, everOpened, code });
  setState("reconnecting");
  const wait = `Retrying in ${(retryInMs / 1000).toFixed(1)} s (attempt ${attempt}).`;
  if (everOpened) {
    const why = reason ? `: ${reason}` : "";
    showError("connection_lost", `The connection to the server was lost (code ${code}${why}). ${wait}`);
  } else {
    showError("server_unreachable", `Server unreachable at ${shared.url}. Is \`voxloop serve\` running? ${wait}`);
  }
  view.setStatus("Waiting for the server…");
}

function sendFrame(pcm) {
  if (shared.transport === "webrtc") return; // the microphone goes out on the WebRTC track
  if (connection && connection.send({ type: "input_audio_buffer.append", audio: encodePcm16(pcm) })) shared.sentFrames += 1;
}

const handlers = {
  "session.created": () => {
    if (shared.reconnects.length && shared.messages.length) view.addNote("Reconnected: a new session begins.");
    view.clearError();
    view.setStatus("Connected. Speak whenever you like; talk over the reply to interrupt it.");
  },
  "voxloop.state": (event) => setState(event.state),
  "input_audio_buffer.speech_started": () => bargeIn("input_audio_buffer.speech_started"),
  "output_audio_buffer.cleared": (event) => {
    bargeIn("output_audio_buffer.cleared");
    replies.mute(event.response_id);
  },
  "conversation.item.input_audio_transcription.completed": (event) => {
    view.addMessage("user", event.item_id, event.transcript);
    shared.messages.push({ role: "user", itemId: event.item_id, text: event.transcript, interrupted: false });
  },
  "response.output_item.added": (event) => assistantNode(event.item.id, event.response_id),
  "response.output_audio_transcript.delta": (event) => {
    const node = assistantNode(event.item_id, event.response_id);
    view.appendText(node, event.delta);
    messageFor(event.item_id).text += event.delta;
  },
  "response.output_audio.delta": (event) => {
    if (!audio || !replies.accept(event)) return;
    shared.playing = true;
    audio.play(event.item_id, decodePcm16(event.delta));
  },
  "response.done": (event) => {
    const response = event.response;
    const item = response.output && response.output[0];
    if (!item) return;
    replies.done(response);
    lastDoneItem = item.id;
    if (response.status !== "completed") interrupted(item.id, "interrupted");
  },
  "conversation.item.truncated": (event) => {
    shared.truncated.push({ itemId: event.item_id, audioEndMs: event.audio_end_ms });
    if (shared.transport === "webrtc") {
      // Over WebRTC the server cut its own track and truncated the item to the audio that left.
      shared.bargeIns.push({ reason: "output_audio_buffer.cleared", itemId: event.item_id, playedMs: event.audio_end_ms });
      interrupted(event.item_id, `interrupted at ${(event.audio_end_ms / 1000).toFixed(1)} s`, true);
    }
  },
  // WebRTC only: the server's reply track started / finished playing a response.
  "output_audio_buffer.started": (event) => {
    shared.playing = true;
    shared.playbackStarted.push(event.response_id);
  },
  "output_audio_buffer.stopped": () => (shared.playing = false),
  "voxloop.trace": (event) => {
    shared.turns.push(event.trace);
    const node = lastDoneItem && assistantNodes.get(lastDoneItem);
    if (node) view.showTrace(node, event.trace);
    view.recordTurn(event.trace);
  },
  error: (event) => {
    const { code, message } = event.error || {};
    showError(code || "server_error", `Server error (${code}): ${message}`);
  },
};

function onEvent(event) {
  const handler = handlers[event.type];
  if (handler) handler(event);
}

function assistantNode(itemId, responseId) {
  let node = assistantNodes.get(itemId);
  if (!node) {
    node = view.addMessage("assistant", itemId, "");
    assistantNodes.set(itemId, node);
    replies.responseOf.set(itemId, responseId);
    shared.messages.push({ role: "assistant", itemId, text: "", interrupted: false });
  }
  return node;
}

function messageFor(itemId) {
  return shared.messages.find((m) => m.itemId === itemId) || { text: "" };
}

// Mark a reply as cut short; `precise` (what was actually played) overrides a generic label.
function interrupted(itemId, label, precise = false) {
  const node = assistantNodes.get(itemId);
  if (!node || (node.dataset.interrupted && !precise)) return;
  messageFor(itemId).interrupted = true;
  view.markInterrupted(node, label);
}

// -- barge-in and playback ---------------------------------------------------------------------

function bargeIn(reason) {
  if (!audio) return;
  replies.bargeIn(); // its remaining audio, still arriving, must stay silent
  pendingBargeIn = reason;
  audio.flush(); // answered by a "flushed" message with what was actually played
}
let pendingBargeIn = null;

function onPlayback(message) {
  shared.playedSamples = message.totalPlayed ?? shared.playedSamples;
  if (message.playedMs) shared.playedMs = message.playedMs;
  if (message.type === "started") {
    const responseId = replies.responseOf.get(message.itemId);
    if (responseId && connection?.send({ type: "voxloop.playback.started", response_id: responseId }))
      shared.playbackStarted.push(responseId);
  } else if (message.type === "drained") {
    shared.playing = false;
  } else if (message.type === "flushed") {
    shared.playing = false;
    onFlushed(message);
  }
}

function onFlushed(message) {
  const reason = pendingBargeIn;
  pendingBargeIn = null;
  const cut = replies.cut(message);
  if (!cut) return; // nothing was cut: no barge-in to show
  shared.bargeIns.push({ reason, itemId: cut.itemId, playedMs: cut.audioEndMs, droppedFrames: cut.droppedFrames });
  interrupted(cut.itemId, `interrupted at ${(cut.audioEndMs / 1000).toFixed(1)} s`, true);
  const truncate = truncateEvent(cut);
  if (connection?.send(truncate)) shared.truncations.push(truncate);
}

setState("off");
view.setButton("start");
