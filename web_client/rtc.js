// The realtime session over WebRTC, with the interface of socket.js's Connection, so app.js can use either.
// Signalling as OpenAI's API does it: POST the SDP offer (all candidates gathered) to /v1/realtime/calls,
// get the answer back; events travel on the "oai-events" data channel. The microphone goes out as an
// Opus track and the reply comes back as one, played by an <audio> element: Chrome cancels echo
// reliably only for audio played from an RTCPeerConnection, so the assistant does not hear itself.
// With an `auth` (auth.js), each (re)connect POSTs the offer with a freshly minted client secret as bearer.
import { backoffDelay } from "./socket.js";

const GATHER_TIMEOUT_MS = 3000;

export function callsUrl(location) {
  return `${location.protocol}//${location.host}/v1/realtime/calls`;
}

export function rtcAvailable() {
  return typeof window.RTCPeerConnection === "function";
}

// Resolve once ICE gathering is complete (or after a bound: what was gathered by then is offered).
function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

export class RtcConnection {
  // handlers: {onOpen(), onEvent(event), onDown({everOpened, code, reason, retryInMs, attempt})}
  // media: {stream: the microphone MediaStream, player: the <audio> element the reply plays in}
  // auth: {secret({fresh}): Promise<string | null>, invalidate()} or null when none is needed.
  constructor(url, handlers, media, { auth = null } = {}) {
    this.url = url;
    this.handlers = handlers;
    this.media = media;
    this.auth = auth;
    this.opening = null; // the open() in progress: a stop() or a newer open() makes it give up
    this.pc = null;
    this.channel = null;
    this.attempt = 0;
    this.timer = null;
    this.stopped = true;
  }

  start() {
    this.stopped = false;
    this.attempt = 0;
    this.open();
  }

  async open() {
    this.timer = null;
    const opening = (this.opening = {});
    const secret = this.auth ? await this.auth.secret({ fresh: true }) : null;
    if (this.stopped || this.opening !== opening) return;
    const pc = new RTCPeerConnection({ iceServers: [] }); // the server is reached directly (same host or LAN)
    const state = { opened: false };
    this.pc = pc;
    for (const track of this.media.stream.getAudioTracks()) pc.addTrack(track, this.media.stream);
    pc.ontrack = (event) => {
      this.media.player.srcObject = event.streams[0] || new MediaStream([event.track]);
      this.media.player.play().catch((error) => console.warn("voxloop: reply audio did not start:", error));
    };
    const channel = pc.createDataChannel("oai-events");
    this.channel = channel;
    channel.onopen = () => {
      state.opened = true;
      this.attempt = 0;
      this.handlers.onOpen();
    };
    channel.onmessage = (message) => this.receive(message.data);
    channel.onclose = () => this.down(pc, state.opened, 1006, "the events channel closed");
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed") this.down(pc, state.opened, 1006, "the WebRTC connection failed");
    };
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      const headers = { "Content-Type": "application/sdp" };
      if (secret) headers.Authorization = `Bearer ${secret}`;
      const response = await fetch(this.url, { method: "POST", body: pc.localDescription.sdp, headers });
      if (response.status === 401) this.auth?.invalidate();
      if (!response.ok) throw new Error(`${response.status}: ${await response.text()}`);
      await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
    } catch (error) {
      this.down(pc, false, 1006, String((error && error.message) || error));
    }
  }

  receive(data) {
    if (typeof data !== "string") return;
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      console.warn("voxloop: the server sent a message that is not JSON; ignored");
      return;
    }
    this.handlers.onEvent(event);
  }

  down(pc, everOpened, code, reason) {
    if (this.pc !== pc) return;
    this.pc = this.channel = null;
    pc.close();
    if (this.stopped) return;
    const retryInMs = backoffDelay(this.attempt);
    this.attempt += 1;
    this.handlers.onDown({ everOpened, code, reason, retryInMs, attempt: this.attempt });
    this.timer = setTimeout(() => this.open(), retryInMs);
  }

  get isOpen() {
    return this.channel !== null && this.channel.readyState === "open";
  }

  send(event) {
    if (!this.isOpen) return false;
    this.channel.send(JSON.stringify(event));
    return true;
  }

  stop() {
    this.stopped = true;
    this.opening = null;
    clearTimeout(this.timer);
    this.timer = null;
    const pc = this.pc;
    this.pc = this.channel = null;
    if (pc) pc.close();
    this.media.player.srcObject = null;
  }
}
