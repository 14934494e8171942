// The browser's audio side: an AudioContext at whatever rate the browser picks, the microphone
// through the capture worklet, and reply audio through the playback worklet.
export const WIRE_RATE = 24000;

export class MicError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind;
  }
}

function micError(error) {
  const name = error && error.name;
  if (name === "NotAllowedError" || name === "SecurityError")
    return new MicError("mic_denied", "Microphone access was denied. Allow the microphone for this page (the icon in the address bar) and press Start again.");
  if (name === "NotFoundError" || name === "OverconstrainedError")
    return new MicError("mic_missing", "No microphone was found. Plug one in (or pick one in your system settings) and press Start again.");
  if (name === "NotReadableError")
    return new MicError("mic_busy", "The microphone is in use by another application or could not be opened. Close it there and press Start again.");
  if (!navigator.mediaDevices)
    return new MicError("mic_insecure", "This page cannot use a microphone here: open it over https:// or from localhost.");
  return new MicError("mic_error", `The microphone could not be started (${name || error}).`);
}

export class AudioEngine {
  // handlers: {onFrame(pcm Int16Array), onLevel(rms, peak), onPlayback(message)}
  constructor(handlers) {
    this.handlers = handlers;
    this.context = null;
    this.stream = null;
    this.capture = null;
    this.playback = null;
  }

  async start() {
    // Created inside the click handler, so autoplay rules let it run; the browser picks the rate.
    this.context = new AudioContext({ latencyHint: "interactive" });
    const resumed = this.context.resume(); // asked at once, while the click still counts as a gesture
    const modules = this.context.audioWorklet;
    await Promise.all([modules.addModule("capture-worklet.js"), modules.addModule("playback-worklet.js")]);
    this.playback = new AudioWorkletNode(this.context, "voxloop-playback", {
      numberOfInputs: 0,
      outputChannelCount: [1],
      processorOptions: { sourceRate: WIRE_RATE },
    });
    this.playback.port.onmessage = (event) => this.handlers.onPlayback(event.data);
    this.playback.connect(this.context.destination);
    await this.openMic();
    await resumed;
  }

  async openMic() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) throw micError(null);
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
      });
    } catch (error) {
      throw micError(error);
    }
    const source = this.context.createMediaStreamSource(this.stream);
    this.capture = new AudioWorkletNode(this.context, "voxloop-capture", {
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { targetRate: WIRE_RATE },
    });
    this.capture.port.onmessage = (event) => {
      const { pcm, rms, peak } = event.data;
      this.handlers.onLevel(rms, peak);
      this.handlers.onFrame(pcm);
    };
    // The capture node outputs silence; linking it to the destination keeps it rendering.
    source.connect(this.capture).connect(this.context.destination);
  }

  get sampleRate() {
    return this.context ? this.context.sampleRate : null;
  }

  get micRate() {
    const track = this.stream && this.stream.getAudioTracks()[0];
    return track ? track.getSettings().sampleRate || null : null;
  }

  play(itemId, pcm) {
    if (this.playback) this.playback.port.postMessage({ type: "audio", itemId, pcm }, [pcm.buffer]);
  }

  flush() {
    if (this.playback) this.playback.port.postMessage({ type: "flush" });
  }

  async stop() {
    if (this.stream) this.stream.getTracks().forEach((track) => track.stop());
    const context = this.context;
    this.context = this.stream = this.capture = this.playback = null;
    if (context) await context.close();
  }
}
