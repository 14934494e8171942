// voxloop kiosk: always listening, no clicks. Starts the microphone by itself, shows the session's
// state and the last exchange in large type, reconnects after server restarts or network loss, and
// reopens the microphone when the audio device goes away and comes back.
import { AudioEngine, WIRE_RATE } from "./audio.js";
import { auth } from "./auth.js";
import { decodePcm16, encodePcm16 } from "./pcm.js";
import { ReplyPlayback, truncateEvent } from "./replies.js";
import { Connection, realtimeUrl } from "./socket.js";

const MIC_RETRY_MS = 2000;
const RESUME_WAIT_MS = 1500; // autoplay blocked if the audio context is still suspended by then
const LABELS = {
  starting: "Starting…",
  asleep: "Asleep",
  listening: "Listening",
  thinking: "Thinking…",
  speaking: "Speaking",
  offline: "Offline",
  "no-microphone": "No microphone",
};

// State for people and tests to look at (window.voxloop in the devtools console).
const shared = (window.voxloop = {
  state: "starting", // what the screen shows
  serverState: null, // the session's voxloop.state
  stateHistory: [],
  mode: null, // the server's mode, from session.created
  wakeWords: [], // voxloop.wake_word.detected payloads (without the chime audio)
  acks: 0, // chimes played
  exchanges: [], // {user, assistant, interrupted}
  playing: false,
  playedSamples: 0,
  micOpenings: 0,
  micLosses: 0,
  micFailures: 0, // failed attempts to open the microphone (each is retried)
  sentFrames: 0, // microphone frames sent to the server
  reconnects: 0,
  errors: [],
  auth: auth.state, // {required, mints, prompts, refusals, remembered}: never the key or a secret
  url: realtimeUrl(window.location),
});

const $ = (id) => document.getElementById(id);
const ui = { root: $("kiosk"), state: $("state"), hint: $("hint"), exchange: $("exchange"), user: $("user-said"), assistant: $("assistant-said"), problem: $("problem"), touch: $("touch") };

let audio = null;
let connection = null;
let wakeHint = "the wake word";
let micProblem = null; // a message while the microphone is unavailable
let micRetry = null;
let reopening = null; // the reopenMic() in flight: a retry and a devicechange never open two microphones
let replies = new ReplyPlayback();

// -- what the screen shows ---------------------------------------------------------------------

function shownState() {
  if (!connection?.isOpen) return shared.reconnects || shared.serverState ? "offline" : "starting";
  if (micProblem) return "no-microphone";
  if (shared.playing && shared.serverState !== "asleep") return "speaking";
  return shared.serverState || "starting";
}

function hintFor(state) {
  if (state === "asleep") return `Say “${wakeHint}” to start`;
  if (state === "listening") return "Go ahead, I'm listening";
  if (state === "thinking") return "One moment";
  if (state === "speaking") return "Talk over me to interrupt";
  if (state === "offline") return "Reconnecting to the server…";
  if (state === "no-microphone") return "Waiting for the microphone…"; // what is wrong: in #problem
  return "Getting the microphone ready";
}

function render() {
  const state = shownState();
  if (state !== shared.state || !shared.stateHistory.length) {
    shared.state = state;
    shared.stateHistory.push(state);
  }
  ui.root.dataset.state = state;
  ui.state.textContent = LABELS[state] || state;
  ui.hint.textContent = hintFor(state);
  if (state === "asleep") ui.exchange.dataset.stale = "";
  else delete ui.exchange.dataset.stale;
}

function showProblem(code, message) {
  if (message) shared.errors.push({ code, message });
  ui.problem.textContent = message;
  ui.problem.hidden = !message;
}

// The exchange a transcript belongs to: the user's words open a new one once the last has a reply;
// a reply's deltas all go to one exchange, and another response opens the next.
function exchangeFor(responseId = null) {
  let last = shared.exchanges[shared.exchanges.length - 1];
  const replied = responseId ? last?.responseId && last.responseId !== responseId : last?.assistant;
  if (!last || replied) {
    last = { user: "", assistant: "", interrupted: false, responseId: null };
    shared.exchanges.push(last);
  }
  if (responseId) last.responseId = responseId;
  return last;
}

function showExchange(exchange) {
  ui.user.textContent = exchange.user;
  ui.assistant.textContent = exchange.assistant + (exchange.interrupted ? " …" : "");
  ui.exchange.hidden = !exchange.user && !exchange.assistant;
}

// -- audio: start by itself, survive the device going away --------------------------------------

async function startAudio() {
  audio = new AudioEngine({ onFrame: sendFrame, onLevel: (rms) => ui.root.style.setProperty("--level", Math.min(1, rms * 8).toFixed(3)), onPlayback });
  const started = audio.start().then(micOpened, micFailed);
  const timer = new Promise((resolve) => setTimeout(resolve, RESUME_WAIT_MS));
  await Promise.race([started, timer]);
  if (audio.context && audio.context.state === "suspended") askForTouch();
}

function askForTouch() {
  // Only where the browser blocks audio without a gesture (a kiosk browser is started with
  // --autoplay-policy=no-user-gesture-required): one touch, once.
  ui.touch.hidden = false;
  ui.touch.onclick = async () => {
    ui.touch.hidden = true;
    await audio.context.resume();
  };
}

function micOpened() {
  micProblem = null;
  shared.micOpenings += 1;
  clearTimeout(micRetry);
  micRetry = null;
  const track = audio.stream?.getAudioTracks()[0];
  if (track) track.addEventListener("ended", micLost, { once: true });
  showProblem("", "");
  render();
}

function micFailed(error) {
  shared.micFailures += 1;
  micProblem = micMessage(error);
  showProblem(error.kind || "mic_error", micProblem);
  render();
  scheduleMicRetry();
}

function micMessage(error) {
  if (error.kind === "mic_denied") return "Microphone blocked: allow it for this page once; it starts by itself from then on.";
  if (error.kind === "mic_missing") return "No microphone found: plug one in; it will be picked up by itself.";
  return error.message || String(error);
}

function micLost() {
  shared.micLosses += 1;
  micFailed({ kind: "mic_lost", message: "The microphone went away: reconnect it; listening resumes by itself." });
}

function scheduleMicRetry() {
  clearTimeout(micRetry);
  micRetry = setTimeout(reopenMic, MIC_RETRY_MS);
}

function reopenMic() {
  if (!audio?.context) return Promise.resolve();
  reopening ??= openMicAgain().finally(() => (reopening = null));
  return reopening;
}

async function openMicAgain() {
  clearTimeout(micRetry);
  closeMic();
  try {
    await audio.openMic();
    micOpened();
  } catch (error) {
    micFailed(error);
  }
}

function closeMic() {
  // The old capture node must fall silent too, or its frames would interleave with the new one's.
  audio.stream?.getTracks().forEach((track) => track.stop());
  if (audio.capture) {
    audio.capture.port.onmessage = null;
    audio.capture.disconnect();
  }
  audio.stream = audio.capture = null;
}

navigator.mediaDevices?.addEventListener?.("devicechange", () => {
  if (micProblem) reopenMic();
});
navigator.permissions
  ?.query({ name: "microphone" })
  .then((status) => (status.onchange = () => status.state === "granted" && micProblem && reopenMic()))
  .catch(() => {});

function sendFrame(pcm) {
  if (connection?.send({ type: "input_audio_buffer.append", audio: encodePcm16(pcm) })) shared.sentFrames += 1;
}

function onPlayback(message) {
  shared.playedSamples = message.totalPlayed ?? shared.playedSamples;
  if (message.type === "started") {
    shared.playing = message.itemId !== "ack" || shared.playing;
    const responseId = replies.responseOf.get(message.itemId);
    if (responseId) connection?.send({ type: "voxloop.playback.started", response_id: responseId });
  } else if (message.type === "drained" || message.type === "flushed") {
    shared.playing = false;
    if (message.type === "flushed") truncate(message);
  }
  render();
}

function truncate(flushed) {
  const cut = replies.cut(flushed);
  if (cut) connection?.send(truncateEvent(cut));
}

function bargeIn() {
  replies.bargeIn();
  audio?.flush();
}

// -- the socket --------------------------------------------------------------------------------

const handlers = {
  "session.created": (event) => {
    shared.mode = event.session?.voxloop?.mode || null;
    if (shared.mode && shared.mode !== "kiosk")
      showProblem("not_kiosk", "The server is not in kiosk mode: start it with `voxloop serve --kiosk`.");
    else showProblem("", micProblem || "");
  },
  "voxloop.state": (event) => {
    shared.serverState = event.state;
    render();
  },
  "voxloop.wake_word.detected": (event) => {
    const { ack_audio: ack, ...detected } = event;
    shared.wakeWords.push(detected);
    if (ack && audio) {
      audio.play("ack", decodePcm16(ack));
      shared.acks += 1;
    }
  },
  "input_audio_buffer.speech_started": bargeIn,
  "output_audio_buffer.cleared": (event) => {
    bargeIn();
    replies.mute(event.response_id);
  },
  "conversation.item.input_audio_transcription.completed": (event) => {
    if (!event.transcript.trim()) return;
    const exchange = exchangeFor();
    exchange.user = [exchange.user, event.transcript.trim()].filter(Boolean).join(" ");
    showExchange(exchange);
  },
  "response.output_audio_transcript.delta": (event) => {
    const exchange = exchangeFor(event.response_id);
    exchange.assistant += event.delta;
    replies.responseOf.set(event.item_id, event.response_id);
    showExchange(exchange);
  },
  "response.output_audio.delta": (event) => {
    if (!audio || !replies.accept(event)) return;
    audio.play(event.item_id, decodePcm16(event.delta));
  },
  "response.done": (event) => {
    replies.done(event.response);
    const exchange = shared.exchanges[shared.exchanges.length - 1];
    if (exchange && event.response.status !== "completed") {
      exchange.interrupted = true;
      showExchange(exchange);
    }
  },
  error: (event) => {
    const { code, message } = event.error || {};
    showProblem(code || "server_error", `Server error (${code}): ${message}`);
  },
};

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
  render();
}

function onDown({ everOpened, retryInMs }) {
  shared.reconnects += 1;
  shared.serverState = null;
  audio?.flush();
  replies = new ReplyPlayback();
  const why = everOpened ? "The connection to the server was lost" : "The server cannot be reached";
  showProblem("connection_lost", `${why}; retrying in ${(retryInMs / 1000).toFixed(1)} s.`);
  render();
}

async function loadWakeWords() {
  try {
    const config = await (await auth.fetch("/api/config")).json();
    const words = (config.wake?.words || []).map((word) => word.name.replaceAll("_", " "));
    if (words.length) wakeHint = words.map((w) => w.replace(/\b\w/g, (c) => c.toUpperCase())).join("” or “");
  } catch {
    // keep the generic hint; the socket's reconnects report a server that is down
  }
  render();
}

render();
connection = new Connection(shared.url, { onOpen, onEvent: (event) => handlers[event.type]?.(event), onDown }, { auth });
connection.start();
loadWakeWords();
startAudio();
