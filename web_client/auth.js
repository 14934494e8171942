// Credentials for the built-in pages when the server requires an API key (README "Security").
//
// Browsers cannot set WebSocket headers, so the pages never send the key itself except to
// POST /v1/realtime/client_secrets (Authorization: Bearer <key>); the short-lived secret it returns
// opens the WebSocket (subprotocol "openai-insecure-api-key.<secret>"), the WebRTC offer and the REST
// calls (Authorization: Bearer <secret>). Discovery is the mint endpoint itself: asked without a key,
// it answers 401 when a key is required (then the page asks for one) and 200 when auth is off.
// The key lives in sessionStorage, or in localStorage when the user ticks "Remember on this device"
// (a kiosk must survive restarts); never in a URL, a log or the console.

export const MINT_PATH = "/v1/realtime/client_secrets";
export const KEY_SUBPROTOCOL = "openai-insecure-api-key.";
const STORAGE_KEY = "voxloop.apiKey";
const RENEW_BEFORE_MS = 30_000; // a cached secret is renewed this long before it expires (or at 3/4 of its life)

// `where`: "sessionStorage" or "localStorage" (reading either may throw where storage is disabled).
function storageGet(where) {
  try {
    return window[where].getItem(STORAGE_KEY);
  } catch {
    return null; // storage disabled: the key lives in memory only
  }
}

function storageSet(where, value) {
  try {
    if (value === null) window[where].removeItem(STORAGE_KEY);
    else window[where].setItem(STORAGE_KEY, value);
  } catch {
    // storage disabled or full: the in-memory copy still works for this page
  }
}

async function detailOf(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

function withBearer(init, secret) {
  if (!secret) return init;
  const headers = new Headers(init.headers || {});
  headers.set("Authorization", `Bearer ${secret}`);
  return { ...init, headers };
}

// When the secret stops being good, on this browser's clock: the server's `expires_at` is on its own
// clock, so the lifetime is measured against the response's Date header (1 s resolution: 1 s spare).
function renewAt(expiresAt, response) {
  const serverNow = Date.parse(response.headers.get("Date") || "") || Date.now();
  const lifetimeMs = Math.max(0, expiresAt * 1000 - serverNow - 1000);
  return Date.now() + lifetimeMs - Math.min(RENEW_BEFORE_MS, lifetimeMs / 4);
}

export class Auth {
  constructor() {
    this.memoryKey = null;
    this.cached = null; // {value, renewAt}
    this.minting = null; // the mint in flight, shared by all who need a secret meanwhile
    this.prompting = null; // the key form's promise while it is shown
    this.form = null;
    this.forgetButton = null;
    // For people and tests (window.voxloop.auth): never holds the key or a secret.
    this.state = { required: null, mints: 0, prompts: 0, refusals: [], remembered: false };
    this.state.remembered = storageGet("localStorage") !== null;
  }

  key() {
    return storageGet("sessionStorage") ?? storageGet("localStorage") ?? this.memoryKey;
  }

  setKey(value, remember) {
    this.memoryKey = value;
    storageSet(remember ? "localStorage" : "sessionStorage", value);
    storageSet(remember ? "sessionStorage" : "localStorage", null);
    this.state.remembered = remember;
    this.showForget();
  }

  // A button that forgets the stored key (shown only while there is one); the next secret asks again.
  bindForget(button) {
    this.forgetButton = button;
    button.addEventListener("click", () => this.forgetKey());
    this.showForget();
  }

  showForget() {
    if (this.forgetButton) this.forgetButton.hidden = this.key() === null;
  }

  forgetKey() {
    this.memoryKey = null;
    this.cached = null;
    storageSet("sessionStorage", null);
    storageSet("localStorage", null);
    this.state.remembered = false;
    this.showForget();
  }

  // The server refused a credential (401, or a WebSocket closed 1008): ask again next time.
  invalidate() {
    this.cached = null;
    this.state.required = null;
  }

  // A client secret, or null when none is needed (auth off) or none can be had (the server is
  // unreachable or has no mint endpoint: the request that follows reports what is wrong).
  // `fresh` mints a new one (before each connect); otherwise a cached one is reused until near expiry.
  async secret({ fresh = false } = {}) {
    if (!fresh && this.cached && Date.now() < this.cached.renewAt) return this.cached.value;
    if (this.state.required === false && !this.key()) return null;
    this.minting ??= this.mint().finally(() => (this.minting = null));
    return this.minting;
  }

  // The subprotocols that open the realtime WebSocket (undefined when auth is off).
  async protocols() {
    const secret = await this.secret({ fresh: true });
    return secret ? ["realtime", KEY_SUBPROTOCOL + secret] : undefined;
  }

  // fetch() with the secret as bearer; a 401 (a secret minted before a server restart, or auth just
  // turned on) is retried once with a freshly minted secret.
  async fetch(url, init = {}) {
    const response = await fetch(url, withBearer(init, await this.secret()));
    if (response.status !== 401) return response;
    this.invalidate();
    return fetch(url, withBearer(init, await this.secret({ fresh: true })));
  }

  async mint() {
    for (;;) {
      const key = this.key();
      let response;
      try {
        response = await fetch(MINT_PATH, { method: "POST", headers: key ? { Authorization: `Bearer ${key}` } : {} });
      } catch {
        return null; // unreachable: the connect or request that needed the secret says so
      }
      if (response.status === 401) {
        this.state.required = true;
        const refused = key ? await detailOf(response) : null;
        const remembered = this.state.remembered; // a kiosk whose key was rotated keeps "remember" ticked
        if (key) {
          this.state.refusals.push(refused);
          this.forgetKey();
        }
        await this.ask(refused, remembered);
        continue;
      }
      const body = response.ok ? await response.json().catch(() => null) : null;
      if (!body) return null; // e.g. 403 origin, or no voxloop here: the connect that follows says what is wrong
      if (!key) {
        this.state.required = false; // minted without a key: auth is off, the pages need no secret
        return null;
      }
      this.state.mints += 1;
      this.cached = { value: body.value, renewAt: renewAt(body.expires_at, response) };
      return body.value;
    }
  }

  // Show the key form (with why the last key was refused) until the user submits a key.
  ask(refused, remembered = this.state.remembered) {
    this.prompting ??= new Promise((resolve) => {
      this.state.prompts += 1;
      const form = this.form || (this.form = buildForm());
      form.error.textContent = refused ? `That key was refused: ${refused}. Check it and enter it again.` : "";
      form.error.hidden = !refused;
      form.remember.checked = remembered || form.remember.checked;
      form.onSubmit = (value, remember) => {
        this.setKey(value, remember);
        this.prompting = null;
        resolve();
      };
      form.show();
    });
    return this.prompting;
  }
}

// The API key form: a modal <dialog> built here so both pages share it (styles: auth.css).
function buildForm() {
  const dialog = document.createElement("dialog");
  dialog.id = "auth";
  dialog.className = "auth";
  dialog.innerHTML = `
    <form method="dialog" autocomplete="on">
      <h2>API key</h2>
      <p class="auth-why">This server requires its API key (by default the value of <code>VOXLOOP_API_KEY</code>
        where it runs). It is sent only to get short-lived client secrets.</p>
      <p id="auth-error" class="auth-error" role="alert" hidden></p>
      <input id="auth-key" name="key" type="password" required autocomplete="current-password"
             aria-label="API key" placeholder="API key" spellcheck="false" />
      <label class="auth-remember"><input id="auth-remember" name="remember" type="checkbox" />
        Remember on this device</label>
      <button id="auth-submit" type="submit">Connect</button>
    </form>`;
  document.body.append(dialog);
  const form = {
    error: dialog.querySelector("#auth-error"),
    input: dialog.querySelector("#auth-key"),
    remember: dialog.querySelector("#auth-remember"),
    onSubmit: null,
    show() {
      form.input.value = "";
      if (!dialog.open) dialog.showModal();
      form.input.focus();
    },
  };
  dialog.addEventListener("cancel", (event) => event.preventDefault()); // nothing works without a key
  dialog.querySelector("form").addEventListener("submit", (event) => {
    event.preventDefault(); // never a navigation: the key must not reach a URL
    const value = form.input.value.trim();
    if (!value) return;
    form.input.value = "";
    dialog.close();
    form.onSubmit?.(value, form.remember.checked);
  });
  return form;
}

// One per page, shared by its modules.
export const auth = new Auth();
