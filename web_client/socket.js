// The realtime WebSocket with reconnect and exponential backoff (with jitter). With an `auth`
// (auth.js), each (re)connect first gets a freshly minted client secret for the subprotocol.
export const BACKOFF = { firstMs: 500, factor: 2, maxMs: 10000, jitter: 0.2 };

export function backoffDelay(attempt) {
  const base = Math.min(BACKOFF.maxMs, BACKOFF.firstMs * BACKOFF.factor ** attempt);
  return Math.round(base * (1 + BACKOFF.jitter * (Math.random() * 2 - 1)));
}

export function realtimeUrl(location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/v1/realtime`;
}

const CLOSE_POLICY_VIOLATION = 1008; // the server refused the credential (or the origin)

export class Connection {
  // handlers: {onOpen(), onEvent(event), onDown({everOpened, code, reason, retryInMs, attempt})}
  // auth: {protocols(): Promise<string[] | undefined>, invalidate()} or null when none is needed.
  constructor(url, handlers, { auth = null } = {}) {
    this.url = url;
    this.handlers = handlers;
    this.auth = auth;
    this.opening = null; // the open() in progress: a stop() or a newer open() makes it give up
    this.ws = null;
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
    const protocols = this.auth ? await this.auth.protocols() : undefined;
    if (this.stopped || this.opening !== opening) return;
    let opened = false;
    const ws = new WebSocket(this.url, protocols);
    this.ws = ws;
    ws.onopen = () => {
      opened = true;
      this.attempt = 0;
      this.handlers.onOpen();
    };
    ws.onmessage = (message) => {
      if (typeof message.data !== "string") return; // binary audio is not enabled by this client
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        console.warn("voxloop: the server sent a message that is not JSON; ignored");
        return;
      }
      this.handlers.onEvent(event);
    };
    ws.onclose = (close) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      if (close.code === CLOSE_POLICY_VIOLATION) this.auth?.invalidate();
      const retryInMs = backoffDelay(this.attempt);
      this.attempt += 1;
      this.handlers.onDown({ everOpened: opened, code: close.code, reason: close.reason, retryInMs, attempt: this.attempt });
      this.timer = setTimeout(() => this.open(), retryInMs);
    };
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  send(event) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(event));
    return true;
  }

  stop() {
    this.stopped = true;
    this.opening = null;
    clearTimeout(this.timer);
    this.timer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000, "the user stopped");
  }
}
