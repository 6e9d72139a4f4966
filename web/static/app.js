"use strict";

// Connections go through wsgate.js, which reconnects and resumes chat rooms when the
// "Auto-reconnect" switch is on. It is an ES module; this page script stays a classic one
// (the page's <script> tag is unchanged) and loads it with import().
(() => {
  const WSGATE_JS = new URL("wsgate.js", document.currentScript?.src ?? location.href).href;
  let openConnection = null; // wsgate.js's connect(), once loaded

  const ui = Object.fromEntries(
    [
      "endpointPicker", "connectionUrl", "chatOptions", "room", "name", "subprotocolOptions",
      "subprotocol", "connectForm", "connectButton", "stateLabel", "sendForm", "sendMessage",
      "sendButton", "closeForm", "closeCode", "closeReason", "closeButton", "commsLogBody",
      "commsLogEmpty", "clearLogButton", "rawLogToggle", "tokenOptions", "token", "autoReconnectToggle"
    ].map((id) => [id, document.getElementById(id)]),
  );

  const REFUSED_MESSAGE =
    "Could not connect: the server refused the WebSocket handshake " +
    "(check the endpoint's allowed origins and hosts, its connection limits, " +
    "or that the path is a WebSocket endpoint).";
  const UNREACHABLE_MESSAGE =
    "Could not connect: the server does not answer (is wsgate running, on this host and port?).";

  // A browser reports every failed handshake the same way (1006), whether the server
  // refused it or is not there at all. On an endpoint with auth, a server that has
  // api.handshake_check on says how it would answer (401, 403, 503); one that has it off
  // answers 404, and one asked too often 429: then, as without auth, any answer from the
  // same server's /healthz (an opaque one, when it is another origin) means it is there
  // and refused.
  async function whyNotConnected(socketUrl, token) {
    const target = new URL(socketUrl);
    if (!ui.tokenOptions.hidden && target.host === location.host) {
      try {
        const answer = await fetch("/api/handshake-check", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ path: target.pathname + target.search, token: token || null }),
          cache: "no-store",
        });
        const { status, text } = answer.ok ? await answer.json() : {};
        if (status >= 400) {
          const what = { 401: "Unauthorized", 403: "Forbidden", 503: "Service Unavailable" }[status] || "";
          return `Could not connect: the server answered ${status} ${what}: ${text}` +
            (status === 401 ? " (check the token)" : "");
        }
      } catch {
        // fall through to the general diagnosis
      }
    }
    try {
      const health = new URL("/healthz", socketUrl.replace(/^ws/, "http"));
      await fetch(health, { mode: "no-cors", cache: "no-store" });
      return REFUSED_MESSAGE;
    } catch {
      return UNREACHABLE_MESSAGE;
    }
  }

  let conn = null; // the wsgate.js connection (it may hold several sockets in turn)
  let wasOpened = false; // some socket of conn has opened
  let socketOpened = false; // the current socket has opened
  let cannotConnect = false; // no socket could be made at all (bad URL or token)
  let closeRequest = null; // { code, reason } when the user pressed "Close Socket"

  /* ---------- endpoint selection and URL building ---------- */

  function selectedEndpoint() {
    const option = ui.endpointPicker.selectedOptions[0];
    if (!option) return null;
    return {
      path: option.value,
      handler: option.dataset.handler || "",
      subprotocols: (option.dataset.subprotocols || "").split(" ").filter(Boolean),
      auth: option.dataset.auth || "",
    };
  }

  const isChatSelected = () => selectedEndpoint()?.handler === "chat";

  function socketUrlFor(path) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}${path}`;
  }

  function withChatParams(text) {
    if (!isChatSelected()) return text;
    let url;
    try {
      url = new URL(text);
    } catch {
      return text; // leave hand-edited, unparsable URLs alone
    }
    for (const input of [ui.room, ui.name]) {
      const value = input.value.trim();
      if (value) url.searchParams.set(input.id, value);
      else url.searchParams.delete(input.id);
    }
    return url.href;
  }

  function fillSubprotocols(list) {
    const options = list.map((p) => new Option(p, p));
    ui.subprotocol.replaceChildren(new Option("(none)", ""), ...options);
    ui.subprotocol.value = list.length ? list[0] : "";
    ui.subprotocolOptions.hidden = list.length === 0;
  }

  function onEndpointChange() {
    const endpoint = selectedEndpoint();
    ui.chatOptions.hidden = !isChatSelected();
    ui.tokenOptions.hidden = !endpoint?.auth;
    fillSubprotocols(endpoint ? endpoint.subprotocols : []);
    if (endpoint) ui.connectionUrl.value = withChatParams(socketUrlFor(endpoint.path));
  }

  /* ---------- state and controls ---------- */

  const isOpen = () => conn !== null && conn.state === "open";
  const isIdle = () => conn === null || conn.state === "closed";
  // Between two sockets of one connection: "Close Socket" stops the retries.
  const isRetrying = () => conn !== null && wasOpened && ["reconnecting", "connecting"].includes(conn.state);
  const lockedWhileConnected = () =>
    [ui.connectionUrl, ui.endpointPicker, ui.room, ui.name, ui.subprotocol];

  function updateControls() {
    const idle = isIdle();
    ui.connectButton.disabled = !idle || openConnection === null;
    for (const el of lockedWhileConnected()) el.disabled = !idle;
    // the token is read again before every reconnect: a fresh one may be pasted meanwhile
    ui.token.disabled = !idle && conn.state !== "reconnecting";
    ui.sendButton.disabled = !isOpen();
    ui.closeButton.disabled = !(isOpen() || isRetrying());
  }

  function setState(text, state) {
    ui.stateLabel.textContent = text;
    document.body.dataset.socketState = state;
    updateControls();
  }

  /* ---------- communication log ---------- */

  // The log keeps what it was given (not just its rows), so that flipping the "Raw JSON"
  // toggle re-renders every line already in the log, not only the ones that come after.
  const logEntries = [];
  const RAW_LOG_KEY = "wsgate.rawLog";
  let rawLog = false;

  function loadRawLog() {
    try {
      return localStorage.getItem(RAW_LOG_KEY) === "1";
    } catch {
      return false; // storage blocked: the toggle still works, it is just not remembered
    }
  }

  function saveRawLog(on) {
    try {
      localStorage.setItem(RAW_LOG_KEY, on ? "1" : "0");
    } catch {
      // storage blocked or full
    }
  }

  const AUTO_RECONNECT_KEY = "wsgate.autoReconnect";

  function loadAutoReconnect() {
    try {
      return localStorage.getItem(AUTO_RECONNECT_KEY) !== "0"; // on unless switched off
    } catch {
      return true;
    }
  }

  function saveAutoReconnect(on) {
    try {
      localStorage.setItem(AUTO_RECONNECT_KEY, on ? "1" : "0");
    } catch {
      // storage blocked or full
    }
  }

  function insertRow(kind, from, to, text, extra = {}) {
    const row = ui.commsLogBody.insertRow();
    row.dataset.kind = kind;
    if (extra.type) row.dataset.type = extra.type;
    if (Number.isInteger(extra.id)) row.dataset.id = String(extra.id);
    for (const value of [from, to, text]) row.insertCell().textContent = value;
    if (extra.title) row.cells[2].title = extra.title;
  }

  function scrollLogToEnd() {
    const scroller = ui.commsLogBody.closest(".log-scroll");
    if (scroller) scroller.scrollTop = scroller.scrollHeight;
  }

  // An entry is either one fixed row ({ kind, from, to, text, extra }) or a received
  // frame ({ frame }) whose rows depend on the toggle.
  function renderEntry(entry) {
    if (!entry.frame) return insertRow(entry.kind, entry.from, entry.to, entry.text, entry.extra);
    for (const [text, extra] of receivedLines(entry.frame)) {
      insertRow("received", "Server", "Client", text, extra);
    }
  }

  function addEntry(entry) {
    logEntries.push(entry);
    ui.commsLogEmpty.hidden = true;
    renderEntry(entry);
    scrollLogToEnd();
  }

  function addRow(kind, from, to, text, extra = {}) {
    addEntry({ kind, from, to, text, extra });
  }

  function rerenderLog() {
    ui.commsLogBody.replaceChildren();
    for (const entry of logEntries) renderEntry(entry);
    scrollLogToEnd();
  }

  function clearLog() {
    logEntries.length = 0;
    ui.commsLogBody.replaceChildren();
    ui.commsLogEmpty.hidden = false;
  }

  function setRawLog(on) {
    rawLog = on;
    ui.rawLogToggle.checked = on;
  }

  const str = (value) => (value === undefined || value === null ? "?" : String(value));
  const userList = (users) => (Array.isArray(users) ? users.join(", ") : "");
  const chatLine = (m) => `[${str(m.room)}] ${str(m.from)}: ${str(m.text)}`;
  const timeOf = (ts) => (typeof ts === "number" ? new Date(ts * 1000).toLocaleString() : "");

  const FORMATTERS = {
    welcome: (m) => `welcome ${str(m.name)} to ${str(m.room)} (users: ${userList(m.users)})`,
    join: (m) => `${str(m.name)} joined (users: ${userList(m.users)})`,
    leave: (m) => `${str(m.name)} left (users: ${userList(m.users)})`,
    message: chatLine,
    error: (m) => `error: ${str(m.error)}`,
    publish: (m) =>
      `[${str(m.room)}] published: ${typeof m.data === "string" ? m.data : JSON.stringify(m.data)}`,
    dropped: (m) => `dropped ${str(m.count)} message(s): this client was too slow`,
  };

  function parseTyped(text) {
    if (!text.trimStart().startsWith("{")) return null;
    try {
      const value = JSON.parse(text);
      return value && typeof value.type === "string" ? value : null;
    } catch {
      return null;
    }
  }

  const describeBinary = (data) => `<binary ${data.byteLength ?? data.size} bytes>`;

  function historyLines(msg) {
    const list = Array.isArray(msg.messages) ? msg.messages : [];
    const lines = [[`history: ${list.length} messages`, { type: "history" }]];
    for (const m of list) {
      const isObject = m !== null && typeof m === "object";
      const text = isObject ? chatLine(m) : JSON.stringify(m);
      lines.push([text, { type: "history-message", title: isObject ? timeOf(m.ts) : "", id: isObject ? m.id : null }]);
    }
    return lines;
  }

  // The [text, extra] rows for one received frame: in raw mode a text frame verbatim,
  // otherwise the friendly rendering. Binary frames look the same either way.
  function receivedLines(frame) {
    if (frame.binary) return [[frame.text, {}]];
    const msg = parseTyped(frame.text);
    const extra = msg ? { type: msg.type, title: timeOf(msg.ts), id: msg.id } : {};
    if (rawLog) return [[frame.text, extra]];
    if (msg && msg.type === "history") return historyLines(msg);
    const format = msg && FORMATTERS[msg.type];
    if (!format) return [[frame.text, {}]];
    return [[format(msg), extra]];
  }

  function onMessage(event) {
    const binary = typeof event.data !== "string";
    addEntry({ frame: { binary, text: binary ? describeBinary(event.data) : event.data } });
  }

  /* ---------- socket lifecycle ---------- */

  function onConnecting(event) {
    socketOpened = false;
    if (event.attempt > 0) setState(`Reconnecting… (attempt ${event.attempt})`, "reconnecting");
  }

  function onOpen() {
    wasOpened = true;
    socketOpened = true;
    setState("Open", "open");
    const proto = conn.protocol ? ` (subprotocol: ${conn.protocol})` : "";
    addRow("open", "Server", "Client", `Connection opened${proto}`);
    ui.sendMessage.focus();
  }

  // Browsers report the code/reason of the server's close frame; servers often answer a
  // client close with a bare 1000, so show what the user asked for when they closed.
  function closeSummary(event) {
    const req = closeRequest;
    const code = req ? req.code : event.code;
    const reason = (req ? req.reason : event.reason) || "(none)";
    const note = req && req.code !== event.code ? ` [browser reported code ${event.code}]` : "";
    return { code, reason, note };
  }

  function onClose(event) {
    if (cannotConnect) {
      setState("Ready to connect…", "idle"); // nothing was sent: as if Connect was never pressed
      return;
    }
    const { code, reason, note } = closeSummary(event);
    const retryFailed = wasOpened && !socketOpened && !closeRequest; // a reconnect that did not open
    socketOpened = false;
    if (event.willReconnect) {
      setState(`Connection lost (code ${event.code}); reconnecting…`, "reconnecting");
    } else if (wasOpened) {
      setState(`Closed. Code: ${code}, Reason: ${reason}${note}`, "closed");
    } else {
      whyNotConnected(conn.url, ui.token.value.trim())
        .then((message) => addRow("error", "Client", "Server", message));
      setState(`Closed. Code: ${event.code}, Reason: could not connect`, "failed");
    }
    const [from, to] = closeRequest ? ["Client", "Server"] : ["Server", "Client"];
    if (retryFailed) {
      addRow("close", from, to, `Could not reconnect. Code: ${event.code}.`);
      return;
    }
    addRow("close", from, to, `Connection closed. Code: ${code}. Reason: ${reason}${note}`);
  }

  function onError(event) {
    if (event.error) {
      const token = ui.tokenOptions.hidden ? "" : ui.token.value.trim();
      const hint = token ? " (a token may hold only letters, digits and !#$%&'*+-.^_`|~)" : "";
      addRow("error", "Client", "Server", `Cannot connect: ${event.error.message ?? event.error}${hint}`);
      if (!wasOpened) cannotConnect = true;
      return;
    }
    // Before "open" the close handler explains the failure; avoid a duplicate row.
    if (socketOpened) addRow("error", "Server", "Client", "WebSocket error (the connection failed).");
  }

  const status = (text, type) => addRow("status", "Client", "Client", text, { type });

  function onReconnecting(event) {
    const seconds = (event.delay / 1000).toFixed(1);
    status(`reconnecting in ${seconds} s…`, "reconnecting");
    setState(`Reconnecting in ${seconds} s…`, "reconnecting");
  }

  function onRecovered(event) {
    status(`reconnected, recovered ${event.count} message${event.count === 1 ? "" : "s"}`, "recovered");
  }

  function onNotRecovered() {
    status("history lost, reloaded", "notrecovered");
  }

  function connect() {
    if (!isIdle() || openConnection === null) return;
    const url = ui.connectionUrl.value.trim();
    const protocols = ui.subprotocolOptions.hidden || !ui.subprotocol.value ? [] : [ui.subprotocol.value];
    // Browsers cannot set an Authorization header on a WebSocket; the token travels as a
    // subprotocol entry, which wsgate removes from the offer and never echoes. It is read
    // before every (re)connect.
    const token = () => (ui.tokenOptions.hidden ? "" : ui.token.value.trim());
    const current = openConnection(url, {
      protocols, token, reconnect: ui.autoReconnectToggle.checked, binaryType: "arraybuffer",
    });
    conn = current;
    wasOpened = false;
    socketOpened = false;
    cannotConnect = false;
    closeRequest = null;
    const handlers = {
      connecting: onConnecting, open: onOpen, message: onMessage, error: onError, close: onClose,
      reconnecting: onReconnecting, recovered: onRecovered, notrecovered: onNotRecovered,
    };
    for (const [type, handler] of Object.entries(handlers)) {
      current.addEventListener(type, (event) => current === conn && handler(event));
    }
    setState("Connecting…", "connecting");
  }

  function send() {
    if (!isOpen()) return;
    const text = ui.sendMessage.value;
    conn.send(text);
    addRow("sent", "Client", "Server", text);
    ui.sendMessage.value = "";
    ui.sendMessage.focus();
  }

  function closeSocket() {
    if (!isOpen() && !isRetrying()) return;
    const raw = ui.closeCode.value.trim();
    const code = raw === "" ? 1000 : Number(raw);
    closeRequest = { code, reason: ui.closeReason.value };
    try {
      if (!Number.isInteger(code)) throw new Error(`"${raw}" is not a whole number.`);
      conn.close(code, ui.closeReason.value); // while waiting to retry, "close" comes at once
    } catch (err) {
      closeRequest = null;
      addRow("error", "Client", "Server", `Cannot close with code ${raw}: ${err.message}`);
      return;
    }
    if (conn.state === "closing") setState("Closing…", "closing");
  }

  function setAutoReconnect(on) {
    ui.autoReconnectToggle.checked = on;
    if (conn === null) return;
    conn.reconnect = on;
    if (!on && conn.state === "reconnecting") {
      // switched off while waiting to retry: stop here, as a page without the switch would
      closeRequest = { code: 1000, reason: "auto-reconnect switched off" };
      conn.close(closeRequest.code, closeRequest.reason);
    }
  }

  /* ---------- wiring ---------- */

  function onSubmit(form, action) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      action();
    });
  }

  function init() {
    ui.endpointPicker.addEventListener("change", onEndpointChange);
    for (const input of [ui.room, ui.name]) {
      input.addEventListener("input", () => {
        ui.connectionUrl.value = withChatParams(ui.connectionUrl.value);
      });
    }
    onSubmit(ui.connectForm, connect);
    onSubmit(ui.sendForm, send);
    onSubmit(ui.closeForm, closeSocket);
    ui.clearLogButton.addEventListener("click", clearLog);
    setRawLog(loadRawLog());
    ui.rawLogToggle.addEventListener("change", () => {
      setRawLog(ui.rawLogToggle.checked);
      saveRawLog(rawLog);
      rerenderLog();
    });
    setAutoReconnect(loadAutoReconnect());
    ui.autoReconnectToggle.addEventListener("change", () => {
      setAutoReconnect(ui.autoReconnectToggle.checked);
      saveAutoReconnect(ui.autoReconnectToggle.checked);
    });
    onEndpointChange();
    setState("Ready to connect…", "idle");
  }

  init();
  import(WSGATE_JS).then(
    (wsgate) => {
      openConnection = wsgate.connect;
      updateControls();
    },
    (err) => addRow("error", "Client", "Client", `Cannot load ${WSGATE_JS}: ${err.message}`),
  );
})();
