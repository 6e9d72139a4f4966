"use strict";

(() => {
  const ui = Object.fromEntries(
    [
      "endpointPicker", "connectionUrl", "chatOptions", "room", "name", "subprotocolOptions",
      "subprotocol", "connectForm", "connectButton", "stateLabel", "sendForm", "sendMessage",
      "sendButton", "closeForm", "closeCode", "closeReason", "closeButton", "commsLogBody",
      "commsLogEmpty", "clearLogButton", "rawLogToggle", "tokenOptions", "token"
    ].map((id) => [id, document.getElementById(id)]),
  );

  const REFUSED_MESSAGE =
    "Could not connect: the server refused the WebSocket handshake " +
    "(check the endpoint's allowed origins and hosts, its connection limits, " +
    "or that the path is a WebSocket endpoint).";
  const UNREACHABLE_MESSAGE =
    "Could not connect: the server does not answer (is wsgate running, on this host and port?).";

  // A browser reports every failed handshake the same way (1006), whether the server
  // refused it or is not there at all. On an endpoint with auth, the server says how its
  // auth would answer (401, 403, 503). Otherwise any answer from the same server's
  // /healthz (an opaque one, when it is another origin) means it is there and refused.
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
        const { status, text } = await answer.json();
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

  let socket = null;
  let wasOpened = false;
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

  const isOpen = () => socket !== null && socket.readyState === WebSocket.OPEN;
  const isIdle = () => socket === null || socket.readyState === WebSocket.CLOSED;
  const lockedWhileConnected = () =>
    [ui.connectionUrl, ui.endpointPicker, ui.room, ui.name, ui.subprotocol, ui.token];

  function updateControls() {
    const idle = isIdle();
    ui.connectButton.disabled = !idle;
    for (const el of lockedWhileConnected()) el.disabled = !idle;
    ui.sendButton.disabled = !isOpen();
    ui.closeButton.disabled = !isOpen();
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

  function insertRow(kind, from, to, text, extra = {}) {
    const row = ui.commsLogBody.insertRow();
    row.dataset.kind = kind;
    if (extra.type) row.dataset.type = extra.type;
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
      lines.push([text, { type: "history-message", title: isObject ? timeOf(m.ts) : "" }]);
    }
    return lines;
  }

  // The [text, extra] rows for one received frame: in raw mode a text frame verbatim,
  // otherwise the friendly rendering. Binary frames look the same either way.
  function receivedLines(frame) {
    if (frame.binary) return [[frame.text, {}]];
    const msg = parseTyped(frame.text);
    const extra = msg ? { type: msg.type, title: timeOf(msg.ts) } : {};
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

  function onOpen() {
    wasOpened = true;
    setState("Open", "open");
    const proto = socket.protocol ? ` (subprotocol: ${socket.protocol})` : "";
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
    const { code, reason, note } = closeSummary(event);
    if (wasOpened) {
      setState(`Closed. Code: ${code}, Reason: ${reason}${note}`, "closed");
    } else {
      whyNotConnected(event.target.url, ui.token.value.trim())
        .then((message) => addRow("error", "Client", "Server", message));
      setState(`Closed. Code: ${event.code}, Reason: could not connect`, "failed");
    }
    const [from, to] = closeRequest ? ["Client", "Server"] : ["Server", "Client"];
    addRow("close", from, to, `Connection closed. Code: ${code}. Reason: ${reason}${note}`);
  }

  function onError() {
    // Before "open" the close handler explains the failure; avoid a duplicate row.
    if (wasOpened) addRow("error", "Server", "Client", "WebSocket error (the connection failed).");
  }

  function connect() {
    if (!isIdle()) return;
    const url = ui.connectionUrl.value.trim();
    const protocols = ui.subprotocolOptions.hidden || !ui.subprotocol.value ? [] : [ui.subprotocol.value];
    const token = ui.tokenOptions.hidden ? "" : ui.token.value.trim();
    // Browsers cannot set an Authorization header on a WebSocket; the token travels as a
    // subprotocol entry, which wsgate removes from the offer and never echoes.
    if (token) protocols.push("wsgate.auth", `wsgate.bearer.${token}`);
    let ws;
    try {
      ws = new WebSocket(url, protocols);
    } catch (err) {
      const hint = token ? " (a token may hold only letters, digits and !#$%&'*+-.^_`|~)" : "";
      addRow("error", "Client", "Server", `Cannot connect: ${err.message}${hint}`);
      return;
    }
    ws.binaryType = "arraybuffer";
    socket = ws;
    wasOpened = false;
    closeRequest = null;
    const current = (handler) => (event) => ws === socket && handler(event);
    ws.addEventListener("open", current(onOpen));
    ws.addEventListener("message", current(onMessage));
    ws.addEventListener("error", current(onError));
    ws.addEventListener("close", current(onClose));
    setState("Connecting…", "connecting");
  }

  function send() {
    if (!isOpen()) return;
    const text = ui.sendMessage.value;
    socket.send(text);
    addRow("sent", "Client", "Server", text);
    ui.sendMessage.value = "";
    ui.sendMessage.focus();
  }

  function closeSocket() {
    if (!isOpen()) return;
    const raw = ui.closeCode.value.trim();
    const code = raw === "" ? 1000 : Number(raw);
    try {
      if (!Number.isInteger(code)) throw new Error(`"${raw}" is not a whole number.`);
      socket.close(code, ui.closeReason.value);
    } catch (err) {
      addRow("error", "Client", "Server", `Cannot close with code ${raw}: ${err.message}`);
      return;
    }
    closeRequest = { code, reason: ui.closeReason.value };
    setState("Closing…", "closing");
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
    onEndpointChange();
    setState("Ready to connect…", "idle");
  }

  init();
})();
