/**
 * wsgate.js: a WebSocket client for wsgate that reconnects and resumes chat rooms.
 *
 * A dependency-free ES module; every wsgate serves it at /static/wsgate.js:
 *
 *   import { connect } from "/static/wsgate.js";
 *
 *   const conn = connect("wss://example.org/chat?room=lobby&name=ann", {
 *     token: () => fetch("/my-token").then((r) => r.text()),  // only for an endpoint with auth
 *   });
 *   conn.addEventListener("message", (e) => show(JSON.parse(e.data)));
 *   conn.addEventListener("recovered", (e) => note(`back, ${e.count} missed messages delivered`));
 *   conn.addEventListener("notrecovered", () => note("history lost: the view was reloaded"));
 *   conn.send("hello");
 *   conn.close(1000, "bye");
 *
 * connect(url, options) returns a connection (an EventTarget) at once; the first socket is
 * opened in a microtask, so listeners added right after connect() see every event.
 *
 * Events
 *   connecting    before each socket is made (event.url: the URL used; event.attempt: 0 for
 *                 the first socket, else the retry number since the last open: 1, 2, ...)
 *   open          a socket opened
 *   message       every frame, exactly as received (event.data), welcome and history included
 *   recovered     after a reconnect whose welcome said "recovered": true, once its history
 *                 frame is in (event.count: how many missed messages that history delivered)
 *   notrecovered  after a reconnect whose welcome did not say "recovered": true: the room's
 *                 history was lost (or the server cannot resume), the history frame that
 *                 follows is the usual last-N, and a view built before is stale
 *                 (event.epoch, event.previousEpoch). Never on the first connection.
 *   error         a socket error; or event.error when the token function failed or the
 *                 WebSocket could not even be made (bad URL, bad subprotocol token)
 *   close         every socket close (event.code, event.reason, event.wasClean), with
 *                 event.willReconnect; also once when close() ends a wait for a retry, or
 *                 when no socket could be made. After one with willReconnect false the
 *                 connection is finished.
 *   reconnecting  a retry is scheduled (event.delay in ms, event.attempt from 1); when the
 *                 browser fires "online" meanwhile, the retry goes at once (not after 1013)
 *
 * Options
 *   token       a string, or a function returning a string or a promise of one, called before
 *               every connect (so a reconnect after 3000 "token expired" gets a fresh one); it
 *               is sent as the subprotocol pair ["wsgate.auth", "wsgate.bearer." + token],
 *               never in the URL. An empty token sends no pair.
 *   protocols   other subprotocols to offer (before the auth pair)
 *   reconnect   true (default): reconnect after an unexpected close; also a settable property
 *   minDelay    500 (ms); maxDelay 30000 (ms): retry n (from 0) waits
 *               random(0, min(maxDelay, minDelay * 2^n)) ("full jitter"); n counts the
 *               retries since a socket last stayed open for healthyAfter
 *   healthyAfter  5000 (ms): how long a socket must stay open to reset n to 0, so that a
 *               server that accepts and then closes at once is retried ever more slowly
 *   tryAgainDelay  5000 (ms): after 1013 "try again later" a retry waits this long plus
 *               the usual backoff, and the browser's "online" event does not cut it short
 *   maxRetries  Infinity: give up after this many attempts in a row that did not open
 *   retryFirst  false: if the very first socket never opens (refused handshake, bad URL,
 *               server down) give up at once instead of retrying: that is usually a mistake,
 *               not an outage
 *   resume      true: send since/epoch on reconnect (see below)
 *   shouldReconnect  a function (code) => boolean that replaces the list below, for a
 *               protocol with close codes of its own (Centrifugo: 3500-3999 and 4500-4999 are final)
 *   binaryType  "blob" (the WebSocket default) or "arraybuffer"
 *   WebSocket   the WebSocket class to use (default: the global one at connect time)
 *
 * Which closes reconnect (shouldReconnect below). Never after the user's own close().
 *   No:  1000 normal (the server ended the session on purpose), 1002 protocol error,
 *        1003 unsupported data, 1007 invalid data, 1008 policy violation, 1009 message too
 *        big, 1010 missing extension, 1015 TLS failure, 3003 forbidden, 4000-4999 (the
 *        application's own codes)
 *   Yes: everything else, notably 1001 going away, 1005 no code, 1006 dropped, 1011 server
 *        error, 1012 service restart, 1013 try again later, 1014 bad gateway, 3000 token
 *        expired (a fresh token is fetched first)
 * A browser reports a refused handshake (401, 403, a wrong origin) as 1006 as well: with
 * retryFirst false the first connection is not retried, later ones are (with backoff).
 *
 * Resume: the module remembers the last "epoch" string of any JSON frame, and the last
 * integer "id" of any JSON frame or of the messages of a "history" frame (a new epoch
 * forgets the id). Once it knows an epoch, each reconnect sets the query parameters
 * since=<last id, 0 if none> and epoch=<epoch> on the URL (replacing earlier ones, keeping
 * the rest), so the server can send exactly the missed messages: no gap, no duplicate.
 * The module never drops or reorders frames itself.
 */

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

const NO_RETRY = new Set([1000, 1002, 1003, 1007, 1008, 1009, 1010, 1015, 3003]);

/** Whether a close with this code is worth a reconnect (see the list above). */
export function shouldReconnect(code) {
  if (code >= 4000 && code <= 4999) return false;
  return !NO_RETRY.has(code);
}

/** The wait before retry ``attempt`` (from 0): full jitter, in whole milliseconds. */
export function backoffDelay(attempt, minDelay = 500, maxDelay = 30000, random = Math.random) {
  const ceiling = Math.min(maxDelay, minDelay * 2 ** attempt);
  return Math.floor(random() * ceiling);
}

/** ``url`` with since/epoch set (replaced if present); other parameters are kept. */
export function resumeUrl(url, since, epoch) {
  let parsed;
  try {
    parsed = new URL(url, globalThis.location?.href);
  } catch {
    return url; // not a URL we can edit: connect to it as given
  }
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  else if (parsed.protocol === "https:") parsed.protocol = "wss:";
  parsed.searchParams.set("since", String(since));
  parsed.searchParams.set("epoch", epoch);
  return parsed.href;
}

function parseFrame(data) {
  if (typeof data !== "string" || !data.trimStart().startsWith("{")) return null;
  try {
    const value = JSON.parse(data);
    return value !== null && typeof value === "object" && !Array.isArray(value) ? value : null;
  } catch {
    return null;
  }
}

function makeEvent(type, props) {
  let event;
  if (type === "message" && typeof MessageEvent === "function") {
    event = new MessageEvent(type, { data: props.data });
  } else if (type === "close" && typeof CloseEvent === "function") {
    event = new CloseEvent(type, { code: props.code, reason: props.reason, wasClean: props.wasClean });
  } else {
    event = new Event(type);
  }
  for (const [key, value] of Object.entries(props)) {
    if (!(key in event)) Object.defineProperty(event, key, { value, enumerable: true });
  }
  return event;
}

function closeArgumentError(code, reason) {
  if (code !== undefined && code !== 1000 && !(Number.isInteger(code) && code >= 3000 && code <= 4999)) {
    return new DOMException(`The close code must be 1000 or in 3000-4999; ${code} is neither.`,
      "InvalidAccessError");
  }
  if (reason !== undefined && new TextEncoder().encode(String(reason)).length > 123) {
    return new DOMException("The close reason must be at most 123 bytes of UTF-8.", "SyntaxError");
  }
  return null;
}

class WsgateConnection extends EventTarget {
  #url;
  #options;
  #socket = null;
  #state = "connecting"; // connecting | open | closing | reconnecting | closed
  #currentUrl = "";
  #failures = 0; // sockets in a row that did not open (for maxRetries and event.attempt)
  #backoff = 0; // retries since a socket last stayed open healthyAfter ms (the backoff exponent)
  #openedAt = 0; // performance.now() when the current socket opened
  #floorWait = false; // the pending retry waits out tryAgainDelay (after 1013)
  #nextAttempt = 0; // the attempt number the next "connecting" event carries
  #everOpened = false;
  #isReconnect = false; // the current socket follows one that was open
  #resumeEpoch = null; // the epoch known when the current socket was made
  #welcomed = false; // the current socket's first welcome was seen
  #pendingRecovery = false; // waiting for the history of a recovered resume
  #userClosed = false;
  #timer = null;
  #epoch = null;
  #lastId = null;
  #reconnect;
  #onOnline = () => this.#retryNow();

  constructor(url, options) {
    super();
    this.#url = String(url);
    this.#currentUrl = this.#url;
    this.#options = {
      minDelay: 500, maxDelay: 30000, healthyAfter: 5000, tryAgainDelay: 5000, maxRetries: Infinity,
      retryFirst: false, resume: true,
      protocols: [], binaryType: "blob", ...options,
    };
    this.#reconnect = this.#options.reconnect !== false;
    globalThis.addEventListener?.("online", this.#onOnline);
    queueMicrotask(() => this.#open());
  }

  /** "connecting", "open", "closing", "reconnecting" (waiting to retry) or "closed". */
  get state() { return this.#state; }

  /** Like WebSocket.readyState: CONNECTING also while waiting to retry. */
  get readyState() {
    return { connecting: CONNECTING, reconnecting: CONNECTING, open: OPEN, closing: CLOSING }[this.#state] ?? CLOSED;
  }

  /** The URL of the latest attempt (with since/epoch on a resume). */
  get url() { return this.#currentUrl; }

  /** The subprotocol the server chose for the current socket ("" if none or not open). */
  get protocol() { return this.#socket?.protocol ?? ""; }

  get bufferedAmount() { return this.#socket?.bufferedAmount ?? 0; }

  /** The current WebSocket, or null while waiting to retry or when closed. */
  get socket() { return this.#socket; }

  /** The last epoch seen, or null. */
  get epoch() { return this.#epoch; }

  /** The last message id seen in that epoch, or null. */
  get lastId() { return this.#lastId; }

  get reconnect() { return this.#reconnect; }

  set reconnect(on) { this.#reconnect = Boolean(on); }

  send(data) {
    if (this.#state !== "open") {
      throw new DOMException(`wsgate: cannot send while the connection is ${this.#state}`, "InvalidStateError");
    }
    this.#socket.send(data);
  }

  /** Close for good: no reconnect after this, and a pending retry is cancelled. */
  close(code, reason) {
    const problem = closeArgumentError(code, reason);
    if (problem) throw problem;
    if (this.#userClosed || this.#state === "closed") return;
    this.#userClosed = true;
    clearTimeout(this.#timer);
    this.#timer = null;
    if (this.#socket) {
      this.#state = "closing";
      if (code === undefined) this.#socket.close();
      else this.#socket.close(code, reason ?? "");
      return;
    }
    // waiting to retry, or fetching a token: no socket to close
    this.#setClosed();
    this.#emit("close", { code: code ?? 1000, reason: reason ?? "", wasClean: true, willReconnect: false });
  }

  #setClosed() {
    this.#state = "closed";
    globalThis.removeEventListener?.("online", this.#onOnline);
  }

  // The browser says the network is back: a retry that waits goes now, unless the server
  // itself asked for time (1013): the network was not its problem.
  #retryNow() {
    if (this.#state !== "reconnecting" || this.#timer === null || this.#floorWait) return;
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#open();
  }

  #emit(type, props = {}) {
    this.dispatchEvent(makeEvent(type, props));
  }

  async #open() {
    if (this.#userClosed) return;
    this.#state = "connecting";
    const { token, protocols } = this.#options;
    let value = "";
    if (token !== undefined && token !== null) {
      try {
        value = String((typeof token === "function" ? await token() : token) ?? "");
      } catch (error) {
        if (this.#userClosed) return;
        this.#emit("error", { error });
        this.#finish({ code: 1006, reason: "no token", wasClean: false }, false);
        return;
      }
      if (this.#userClosed) return;
    }
    const offer = [...protocols];
    if (value) offer.push("wsgate.auth", `wsgate.bearer.${value}`);
    const resuming = this.#everOpened && this.#options.resume && this.#epoch !== null;
    this.#currentUrl = resuming ? resumeUrl(this.#url, this.#lastId ?? 0, this.#epoch) : this.#url;
    this.#emit("connecting", { attempt: this.#nextAttempt, url: this.#currentUrl });
    if (this.#userClosed) return;
    const WS = this.#options.WebSocket ?? globalThis.WebSocket;
    let ws;
    try {
      ws = new WS(this.#currentUrl, offer);
    } catch (error) {
      this.#emit("error", { error });
      this.#setClosed();
      const reason = String(error?.message ?? error);
      this.#emit("close", { code: 1006, reason, wasClean: false, willReconnect: false });
      return;
    }
    ws.binaryType = this.#options.binaryType;
    this.#socket = ws;
    this.#isReconnect = this.#everOpened;
    this.#resumeEpoch = this.#epoch;
    this.#welcomed = false;
    this.#pendingRecovery = false;
    let opened = false;
    ws.addEventListener("open", () => {
      if (ws !== this.#socket) return;
      opened = true;
      this.#everOpened = true;
      this.#failures = 0;
      this.#openedAt = performance.now();
      if (this.#state === "connecting") this.#state = "open";
      this.#emit("open");
    });
    ws.addEventListener("message", (event) => {
      if (ws !== this.#socket) return;
      const frame = this.#options.resume ? parseFrame(event.data) : null;
      if (frame) this.#track(frame);
      this.#emit("message", { data: event.data });
      if (frame && this.#isReconnect) this.#noteResume(frame);
    });
    ws.addEventListener("error", () => {
      if (ws === this.#socket) this.#emit("error");
    });
    ws.addEventListener("close", (event) => {
      if (ws !== this.#socket) return;
      this.#socket = null;
      this.#finish(event, opened);
    });
  }

  // After a socket closed (or no socket could be had): retry, or be closed.
  #finish({ code, reason, wasClean }, opened) {
    if (!opened) this.#failures += 1;
    // Only a socket that stayed open a while resets the backoff: a server that accepts
    // and closes at once (its broker down, say) must not be retried every few 100 ms.
    if (opened && performance.now() - this.#openedAt >= this.#options.healthyAfter) this.#backoff = 0;
    const retryable = this.#options.shouldReconnect ?? shouldReconnect;
    const willReconnect = !this.#userClosed && this.#reconnect && retryable(code) &&
      (this.#everOpened || this.#options.retryFirst) && this.#failures < this.#options.maxRetries;
    if (willReconnect) this.#state = "reconnecting";
    else this.#setClosed();
    this.#emit("close", { code, reason, wasClean, willReconnect });
    if (!willReconnect || this.#userClosed || this.#state !== "reconnecting") return;
    const { minDelay, maxDelay, tryAgainDelay } = this.#options;
    this.#floorWait = code === 1013;
    // 1013: at least tryAgainDelay, plus the jitter, so that all the clients the server
    // turned away do not come back in the same instant.
    const delay = (this.#floorWait ? tryAgainDelay : 0) + backoffDelay(this.#backoff, minDelay, maxDelay);
    this.#backoff += 1;
    this.#nextAttempt = this.#failures + 1;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#open();
    }, delay);
    this.#emit("reconnecting", { delay, attempt: this.#nextAttempt });
  }

  #track(frame) {
    if (typeof frame.epoch === "string") {
      if (frame.epoch !== this.#epoch) this.#lastId = null;
      this.#epoch = frame.epoch;
    }
    if (Number.isInteger(frame.id)) this.#lastId = frame.id;
    if (frame.type === "history" && Array.isArray(frame.messages)) {
      for (const m of frame.messages) {
        if (m !== null && typeof m === "object" && Number.isInteger(m.id)) this.#lastId = m.id;
      }
    }
  }

  #noteResume(frame) {
    if (frame.type === "welcome" && !this.#welcomed) {
      this.#welcomed = true;
      if (frame.recovered === true) {
        this.#pendingRecovery = true;
      } else {
        this.#emit("notrecovered", { epoch: frame.epoch ?? null, previousEpoch: this.#resumeEpoch });
      }
    } else if (frame.type === "history" && this.#pendingRecovery) {
      this.#pendingRecovery = false;
      if (frame.recovered === false) {
        this.#emit("notrecovered", { epoch: this.#epoch, previousEpoch: this.#resumeEpoch });
      } else {
        this.#emit("recovered", { count: Array.isArray(frame.messages) ? frame.messages.length : 0 });
      }
    }
  }
}

/** Open a wsgate connection that reconnects and resumes; see the top of this file. */
export function connect(url, options = {}) {
  return new WsgateConnection(url, options);
}
