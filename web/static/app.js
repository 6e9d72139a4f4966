"use strict";

// Connections go through wsgate.js, which reconnects and resumes chat rooms when the
// "Auto-reconnect" switch is on. It is an ES module; this page script stays a classic one
// (the page's <script> tag is unchanged) and loads it with import().
(() => {
  const WSGATE_JS = new URL("wsgate.js", document.currentScript?.src ?? location.href).href;
  let openConnection = null; // wsgate.js's connect(), once loaded
  let defaultShouldReconnect = null; // wsgate.js's own choice of which closes to retry

  const ui = Object.fromEntries(
    [
      "endpointPicker", "connectionUrl", "chatOptions", "room", "name", "subprotocolOptions",
      "subprotocol", "connectForm", "connectButton", "stateLabel", "sendForm", "sendMessage",
      "sendButton", "closeForm", "closeCode", "closeReason", "closeButton", "commsLogBody",
      "commsLogEmpty", "clearLogButton", "rawLogToggle", "tokenOptions", "token", "autoReconnectToggle",
      "channelsPanel", "channelsConnectForm", "channelsToken", "channelsConnectButton", "channelsState",
      "channelsClientId", "subscribeForm", "channelName", "subscriptionToken", "subscribeButton",
      "unsubscribeButton", "channelsNote", "channelList", "rpcForm", "rpcMethod", "rpcData", "rpcButton",
      "rpcResult", "channelTemplate",
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
  let channelsConn = false; // conn was made for a channels endpoint

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
  const isChannelsSelected = () => selectedEndpoint()?.handler === "channels";

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
    ui.channelsPanel.hidden = !isChannelsSelected();
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
    updateChannelsControls();
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
    if (channelsConn && !binary) onChannelsFrame(event.data);
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
    if (channelsConn && channels.wanted) sendConnect();
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
    if (channelsConn) onChannelsClose(event);
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
    channelsConn = isChannelsSelected();
    // A channels connection resubscribes by itself (with offsets), and its ids are not chat ids.
    const channelsOptions = channelsConn ? { resume: false, shouldReconnect: centrifugoReconnects } : {};
    const current = openConnection(url, {
      protocols, token, reconnect: ui.autoReconnectToggle.checked, binaryType: "arraybuffer", ...channelsOptions,
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
    channels.wanted = false;
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

  /* ---------- channels: the Centrifugo client protocol v2, JSON ---------- */

  // Each text frame holds JSON objects, one a line. A reply carries the id of its command;
  // a push has no id; anything else (the server's "{}") is a ping, answered with "{}" when
  // the connect reply asked for it (pong: true).
  const CALL_TIMEOUT_MS = 10000;
  const MAX_PUBLICATIONS = 200; // per channel area: older ones leave the page
  const channels = {
    wanted: false, // the user pressed Connect: connect (and resubscribe) after every reconnect
    state: "off", // off | connecting | connected
    pong: false,
    nextId: 0, // not reset per socket, as the SDKs do: a late reply never meets a new command
    pending: new Map(), // id -> { method, resolve, reject, timer }
    subs: new Map(), // channel -> its area and stream position, in the order subscribed
    areas: 0, // areas ever made: their form controls get unique ids
  };

  // Centrifugo's rule: 3500-3999 and 4500-4999 are final; the rest of 3000-4999 retries.
  function centrifugoReconnects(code) {
    if (code >= 3000 && code <= 4999) return !(code >= 3500 && code <= 3999) && code < 4500;
    return defaultShouldReconnect ? defaultShouldReconnect(code) : true;
  }

  const json = (value) => (value === undefined ? "" : JSON.stringify(value));
  const describeError = (err) => `error ${str(err?.code)}: ${str(err?.message)}`;

  // What a data field means: JSON if it parses, else the text as a string; empty: nothing.
  function parseData(text) {
    if (text.trim() === "") return undefined;
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  }

  function setChannelsState(state, text) {
    channels.state = state;
    ui.channelsPanel.dataset.channelsState = state;
    ui.channelsState.textContent = text;
    updateControls();
  }

  function note(text, type = "") {
    ui.channelsNote.textContent = text;
    ui.channelsNote.dataset.type = type;
  }

  function updateChannelsControls() {
    const connected = channels.state === "connected";
    const ready = openConnection !== null && (isIdle() || (channelsConn && isOpen() && channels.state === "off"));
    ui.channelsConnectButton.disabled = !ready;
    ui.channelsToken.disabled = channels.state !== "off";
    for (const el of [ui.subscribeButton, ui.unsubscribeButton, ui.rpcButton]) el.disabled = !connected;
    for (const sub of channels.subs.values()) {
      const live = connected && sub.state === "subscribed";
      for (const el of sub.area.querySelectorAll(".channel-publish button")) el.disabled = !live;
      sub.area.querySelector(".channel-unsubscribe").disabled = !connected;
    }
  }

  function sendLine(command, type, id) {
    const text = JSON.stringify(command);
    conn.send(text);
    addRow("sent", "Client", "Server", text, { type, id });
  }

  // A command with an id; settles with the reply's result object, or rejects with its error.
  function call(method, params) {
    return new Promise((resolve, reject) => {
      if (!isOpen()) {
        reject({ code: 0, message: "the socket is not open" });
        return;
      }
      channels.nextId += 1;
      const id = channels.nextId;
      const timer = setTimeout(() => {
        channels.pending.delete(id);
        reject({ code: 1, message: "timeout" });
      }, CALL_TIMEOUT_MS);
      channels.pending.set(id, { method, resolve, reject, timer });
      sendLine({ [method]: params, id }, method, id);
    });
  }

  function onChannelsFrame(text) {
    for (const line of text.split("\n")) {
      if (!line.trim()) continue;
      let reply;
      try {
        reply = JSON.parse(line);
      } catch {
        continue; // the log shows it as it came
      }
      if (reply === null || typeof reply !== "object") continue;
      if (reply.id > 0) onReply(reply);
      else if (reply.push) onPush(reply.push);
      else if (channels.pong && isOpen()) sendLine({}, "pong");
    }
  }

  function onReply(reply) {
    const waiting = channels.pending.get(reply.id);
    if (!waiting) return; // timed out, or a command typed in the Send box
    channels.pending.delete(reply.id);
    clearTimeout(waiting.timer);
    if (reply.error !== undefined && reply.error !== null) waiting.reject(reply.error);
    else waiting.resolve(reply[waiting.method] ?? {});
  }

  function onPush(push) {
    const sub = channels.subs.get(push.channel);
    if (push.pub) {
      if (sub) addPublication(sub, push.pub);
    } else if (push.join || push.leave) {
      const kind = push.join ? "join" : "leave";
      const info = (push.join || push.leave).info || {};
      if (sub) addListItem(sub, `${kind}: client ${str(info.client)} (user "${info.user ?? ""}")`, kind);
    } else if (push.subscribe) {
      const made = ensureArea(push.channel, true);
      setSubscribed(made, push.subscribe);
    } else if (push.unsubscribe) {
      if (sub) {
        removeArea(sub);
        note(`the server unsubscribed ${push.channel}: code ${str(push.unsubscribe.code)}, ` +
          `${str(push.unsubscribe.reason)}`, "unsubscribed");
      }
    } else if (push.message) {
      note(`message from the server: ${json(push.message.data)}`, "message");
    } else if (push.disconnect) {
      note(`the server disconnects: code ${str(push.disconnect.code)}, ${str(push.disconnect.reason)}`,
        "disconnect");
    }
  }

  function channelsConnect() {
    channels.wanted = true;
    if (isIdle()) {
      if (!isChannelsSelected()) return;
      connect(); // the open handler sends connect
      setChannelsState("connecting", "Opening the socket…");
      return;
    }
    if (channelsConn && isOpen() && channels.state === "off") sendConnect();
  }

  async function sendConnect() {
    setChannelsState("connecting", "Connecting…");
    const token = ui.channelsToken.value.trim();
    let result;
    try {
      result = await call("connect", token ? { token } : {});
    } catch (err) {
      if (isOpen()) setChannelsState("off", `Connect failed: ${describeError(err)}`);
      return;
    }
    channels.pong = result.pong === true;
    ui.channelsClientId.textContent = str(result.client);
    const expiry = result.expires ? `, expires in ${str(result.ttl)} s` : "";
    setChannelsState("connected", `Connected${expiry}`);
    const serverSubs = result.subs && typeof result.subs === "object" ? result.subs : {};
    for (const sub of [...channels.subs.values()]) {
      if (sub.server && !(sub.channel in serverSubs)) removeArea(sub);
    }
    for (const [channel, subResult] of Object.entries(serverSubs)) setSubscribed(ensureArea(channel, true), subResult);
    // after a reconnect: the channels subscribed before, from where they were
    for (const sub of channels.subs.values()) {
      if (!sub.server && sub.state !== "subscribed" && sub.state !== "subscribing") subscribe(sub);
    }
  }

  function onChannelsClose(event) {
    for (const pending of channels.pending.values()) {
      clearTimeout(pending.timer);
      pending.reject({ code: event.code, message: "the connection closed" });
    }
    channels.pending.clear();
    channels.pong = false;
    if (!event.willReconnect) channels.wanted = false;
    ui.channelsClientId.textContent = "—";
    for (const sub of channels.subs.values()) setSubState(sub, "closed", "not subscribed: the connection closed");
    const why = event.reason ? ` (${event.code} ${event.reason})` : ` (${event.code})`;
    setChannelsState("off", `Not connected${why}`);
  }

  /* one area per channel: its state, a publish form, presence and history, its publications */

  function ensureArea(channel, server = false) {
    const known = channels.subs.get(channel);
    if (known) {
      known.server = server;
      return known;
    }
    const area = ui.channelTemplate.content.firstElementChild.cloneNode(true);
    channels.areas += 1;
    const inputId = `publishData${channels.areas}`;
    area.querySelector(".publish-label").htmlFor = inputId;
    area.querySelector(".publish-data").id = inputId;
    area.dataset.channel = channel;
    area.querySelector(".channel-name").textContent = channel;
    const sub = { channel, area, server, state: "new", token: "", recoverable: false, offset: 0, epoch: "" };
    area.querySelector(".channel-unsubscribe").addEventListener("click", () => unsubscribe(channel));
    area.querySelector(".channel-publish").addEventListener("submit", (event) => {
      event.preventDefault();
      publishTo(sub);
    });
    area.querySelector(".channel-presence").addEventListener("click", () => presenceOf(sub));
    area.querySelector(".channel-history").addEventListener("click", () => historyOf(sub));
    channels.subs.set(channel, sub);
    ui.channelList.append(area);
    return sub;
  }

  function removeArea(sub) {
    channels.subs.delete(sub.channel);
    sub.area.remove();
    updateControls();
  }

  function setSubState(sub, state, text) {
    sub.state = state;
    sub.area.dataset.state = state;
    sub.area.querySelector(".channel-state").textContent = text;
    updateControls();
  }

  function showResult(sub, kind, text) {
    const out = sub.area.querySelector(".channel-result");
    out.dataset.kind = kind;
    out.textContent = text;
    out.hidden = false;
  }

  function addListItem(sub, text, kind, offset) {
    const list = sub.area.querySelector(".publications");
    const item = document.createElement("li");
    item.dataset.kind = kind;
    if (offset > 0) item.dataset.offset = String(offset);
    item.textContent = text;
    list.append(item);
    while (list.childElementCount > MAX_PUBLICATIONS) list.firstElementChild.remove();
    return item;
  }

  function addPublication(sub, pub) {
    const offset = Number(pub.offset) > 0 ? Number(pub.offset) : 0;
    if (offset > 0) sub.offset = offset;
    if (typeof pub.epoch === "string" && pub.epoch) sub.epoch = pub.epoch;
    const item = addListItem(sub, "", "pub", offset);
    const label = document.createElement("span");
    label.className = "pub-offset";
    label.textContent = offset > 0 ? `offset ${offset}` : "no offset";
    const data = document.createElement("code");
    data.className = "pub-data";
    data.textContent = json(pub.data);
    item.append(label, data);
    if (pub.info) item.title = `from client ${str(pub.info.client)}, user "${pub.info.user ?? ""}"`;
  }

  function setSubscribed(sub, result) {
    if (result.recoverable) sub.recoverable = true;
    if (typeof result.epoch === "string") sub.epoch = result.epoch;
    if (Number(result.offset) > 0) sub.offset = Number(result.offset);
    let text = sub.server ? "subscribed by the server" : "subscribed";
    if (result.positioned || result.recoverable) text += ` at offset ${sub.offset}, epoch ${str(sub.epoch)}`;
    const pubs = Array.isArray(result.publications) ? result.publications : [];
    if (result.was_recovering) {
      text += result.recovered ? `; recovered ${pubs.length} missed` : "; could not recover the missed ones";
    }
    setSubState(sub, "subscribed", text);
    for (const pub of pubs) addPublication(sub, pub);
  }

  function subscribeFromForm() {
    const channel = ui.channelName.value.trim();
    if (!channel) {
      note("Name a channel to subscribe to.", "error");
      return;
    }
    const known = channels.subs.get(channel);
    const sub = known ?? ensureArea(channel);
    sub.token = ui.subscriptionToken.value.trim();
    subscribe(sub, !known);
    ui.channelName.value = "";
    ui.subscriptionToken.value = "";
  }

  async function subscribe(sub, isNew = false) {
    const params = { channel: sub.channel };
    if (sub.token) params.token = sub.token;
    // ask for a position, so a reconnect can recover what it missed (where history is kept)
    params.recoverable = true;
    if (sub.recoverable && sub.epoch) {
      params.recover = true;
      if (sub.offset > 0) params.offset = sub.offset;
      params.epoch = sub.epoch;
    }
    const before = sub.state;
    setSubState(sub, "subscribing", "subscribing…");
    try {
      setSubscribed(sub, await call("subscribe", params));
      note("");
    } catch (err) {
      note(`subscribe ${sub.channel}: ${describeError(err)}`, "error");
      if (isNew) removeArea(sub);
      else if (err.code === 105) setSubState(sub, before, sub.area.querySelector(".channel-state").textContent);
      else setSubState(sub, "failed", `not subscribed: ${describeError(err)}`);
    }
  }

  async function unsubscribe(channel) {
    if (!channel) {
      note("Name a channel to unsubscribe from.", "error");
      return;
    }
    try {
      await call("unsubscribe", { channel });
      note(`unsubscribed from ${channel}`, "unsubscribed");
    } catch (err) {
      note(`unsubscribe ${channel}: ${describeError(err)}`, "error");
      return;
    }
    const sub = channels.subs.get(channel);
    if (sub) removeArea(sub);
  }

  async function publishTo(sub) {
    const input = sub.area.querySelector(".publish-data");
    const data = parseData(input.value);
    try {
      await call("publish", { channel: sub.channel, data: data === undefined ? null : data });
      showResult(sub, "publish", `published ${json(data ?? null)}`);
      input.value = "";
    } catch (err) {
      showResult(sub, "error", `publish: ${describeError(err)}`);
    }
  }

  async function presenceOf(sub) {
    try {
      const result = await call("presence", { channel: sub.channel });
      const clients = Object.values(result.presence ?? {});
      const lines = clients.map((c) => `${str(c.client)}  user "${c.user ?? ""}"` +
        (c.conn_info === undefined ? "" : `  conn_info ${json(c.conn_info)}`) +
        (c.chan_info === undefined ? "" : `  chan_info ${json(c.chan_info)}`));
      showResult(sub, "presence", [`presence: ${clients.length} client${clients.length === 1 ? "" : "s"}`,
        ...lines].join("\n"));
    } catch (err) {
      showResult(sub, "error", `presence: ${describeError(err)}`);
    }
  }

  async function historyOf(sub) {
    try {
      // the latest 100, shown oldest first
      const result = await call("history", { channel: sub.channel, limit: 100, reverse: true });
      const pubs = (Array.isArray(result.publications) ? result.publications : []).reverse();
      const top = `history: ${pubs.length} publication${pubs.length === 1 ? "" : "s"}` +
        ` (stream offset ${str(result.offset ?? 0)}, epoch ${str(result.epoch)})`;
      const lines = pubs.map((p) => `offset ${str(p.offset)}: ${json(p.data)}`);
      showResult(sub, "history", [top, ...lines].join("\n"));
    } catch (err) {
      showResult(sub, "error", `history: ${describeError(err)}`);
    }
  }

  async function callRpc() {
    const params = { method: ui.rpcMethod.value.trim() };
    const data = parseData(ui.rpcData.value);
    if (data !== undefined) params.data = data;
    ui.rpcResult.hidden = false;
    try {
      const result = await call("rpc", params);
      ui.rpcResult.dataset.kind = "rpc";
      ui.rpcResult.textContent = `reply: ${json(result.data ?? null)}`;
    } catch (err) {
      ui.rpcResult.dataset.kind = "error";
      ui.rpcResult.textContent = `rpc: ${describeError(err)}`;
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
    onSubmit(ui.channelsConnectForm, channelsConnect);
    onSubmit(ui.subscribeForm, () => subscribeFromForm());
    ui.unsubscribeButton.addEventListener("click", () => unsubscribe(ui.channelName.value.trim()));
    onSubmit(ui.rpcForm, () => callRpc());
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
      defaultShouldReconnect = wsgate.shouldReconnect;
      updateControls();
    },
    (err) => addRow("error", "Client", "Client", `Cannot load ${WSGATE_JS}: ${err.message}`),
  );
})();
