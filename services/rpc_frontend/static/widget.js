/* Habla chat widget: plain JavaScript, no framework.

   Embedded (loaded by /embed.js into the snippet's hidden frame): it draws into a
   visible frame of its own in the host page, so host CSS cannot touch it and our
   globals never touch the host. On Habla's own pages (/chat/<site>, /preview/<site>)
   window.hablaConfig says so and it draws into the page.

   Everything a site or an operator writes is put into the page with textContent,
   never as HTML. Receiving always resumes from (conversation id, last seq), over a
   WebSocket or, when WebSockets fail, long-polling, so nothing is lost or doubled. */
(function () {
  "use strict";
  var BASE = "__HABLA_BASE__";
  var CSS = "__HABLA_CSS__";
  var SITE_RE = /^\d{4}-\d{5}-\d{2}-\d{4}$/;
  var COLOUR_RE = /^#[0-9a-fA-F]{6}$/;
  // Stop saying "typing" this long after the last key (what chat users expect, ~Olark).
  var TYPING_IDLE_MS = 4000;
  // Forget an operator's "typing" if no stop arrives (their client may have vanished).
  var TYPING_SHOWN_MS = 15000;
  // Resend an unconfirmed line after this long, with the same id (never duplicated).
  var RESEND_MS = 8000;
  // After a 5xx (Redis or RabbitMQ down for a moment) without Retry-After: resend after
  // 1 s, doubling up to 30 s, plus jitter so recovering servers are not hit in step.
  var RETRY_MIN_MS = 1000, RETRY_MAX_MS = 30000;
  // Keep-alive on the WebSocket: under the 30-60 s idle timeouts of common proxies.
  var PING_MS = 25000;
  // Reconnect backoff doubles from 1 s up to 30 s.
  var BACKOFF_MIN_MS = 1000, BACKOFF_MAX_MS = 30000;
  // After this many WebSockets that never opened, fall back to long-polling.
  var WS_FAILURES_BEFORE_POLL = 2;
  // WebSocket close code the server uses for an unknown or expired visitor token.
  var SESSION_EXPIRED = 4401;
  // Collapsed tab and open box sizes of the embedded frame (px); phones get the screen.
  var TAB_W = 240, TAB_H = 52, BOX_W = 360, BOX_H = 540, PHONE_MAX_W = 480;

  var config = window.hablaConfig || null;
  var mode = config ? config.mode : "embed";
  var host = config ? window : window.parent;
  var queue = [];
  var site;
  if (config) {
    site = config.site;
  } else {
    var snippet = host.habla;
    site = snippet && snippet.site;
    queue = (snippet && snippet.q) || [];
  }
  if (!SITE_RE.test(String(site))) return;
  var api = BASE + "/api/sites/" + site;

  // --- where we draw -------------------------------------------------------------
  var frame = null, doc = document;
  if (mode === "embed") {
    frame = host.document.createElement("iframe");
    frame.title = "Live chat";
    frame.setAttribute("allowtransparency", "true");
    frame.style.cssText = "position:fixed;bottom:0;right:16px;width:" + TAB_W + "px;height:" + TAB_H +
      "px;border:0;margin:0;padding:0;z-index:2147483000;background:transparent;display:block;" +
      "max-width:100%;max-height:100%;color-scheme:normal";
    (host.document.body || host.document.documentElement).appendChild(frame);
    doc = frame.contentWindow.document;
    doc.open();
    doc.write('<!doctype html><html lang="en"><head><meta charset="utf-8"></head><body class="habla-embed"></body></html>');
    doc.close();
  }
  var style = doc.createElement("style");
  style.textContent = CSS;
  doc.head.appendChild(style);

  function el(tag, attrs, kids) {
    var node = doc.createElement(tag);
    for (var k in attrs || {}) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "className") node.className = attrs[k];
      else node.setAttribute(k, attrs[k]);
    }
    (kids || []).forEach(function (kid) { node.appendChild(kid); });
    return node;
  }

  // --- the box -------------------------------------------------------------------
  var tabTitle = el("span", { className: "hb-tab-title" });
  var unreadBadge = el("span", { className: "hb-unread", "aria-label": "unread messages", hidden: "" });
  var tab = el("button", { className: "hb-tab", type: "button", "aria-expanded": "false" }, [tabTitle, unreadBadge]);
  var title = el("h2", { className: "hb-title", id: "hb-title" });
  var subtitle = el("div", { className: "hb-sub", "aria-live": "polite" });
  var endButton = el("button", { className: "hb-end", type: "button", text: "End chat", hidden: "" });
  var minButton = el("button", { className: "hb-min", type: "button", "aria-label": "Minimise chat", text: "\u2013" });
  var logBox = el("div", { className: "hb-log", role: "log", "aria-live": "polite", "aria-label": "Conversation", tabindex: "0" });
  var typingLine = el("div", { className: "hb-typing", "aria-live": "polite" });
  var input = el("textarea", { "aria-label": "Message", rows: "1" });
  var sendForm = el("form", { className: "hb-send" }, [input, el("button", { className: "hb-btn", type: "submit", text: "Send" })]);
  var awayText = el("p", { className: "hb-note" });
  var nameLabel = el("span"), emailLabel = el("span"), bodyLabel = el("span");
  var nameInput = el("input", { name: "name", autocomplete: "name", required: "" });
  var emailInput = el("input", { name: "email", type: "email", autocomplete: "email", required: "" });
  var bodyInput = el("textarea", { name: "body", required: "" });
  var offlineError = el("p", { className: "hb-error", role: "alert" });
  var offlineDone = el("p", { className: "hb-note hb-done", hidden: "", tabindex: "-1", role: "status" });
  var offlineForm = el("form", { className: "hb-offline", hidden: "" }, [
    awayText,
    el("label", {}, [nameLabel, nameInput]),
    el("label", {}, [emailLabel, emailInput]),
    el("label", {}, [bodyLabel, bodyInput]),
    offlineError,
    el("button", { className: "hb-btn", type: "submit", text: "Send message" }),
  ]);
  var box = el("section", { className: "hb-box", role: "dialog", "aria-labelledby": "hb-title" }, [
    el("header", { className: "hb-head" }, [el("div", { className: "hb-titles" }, [title, subtitle]), endButton, minButton]),
    logBox, typingLine, sendForm, offlineForm, offlineDone,
  ]);
  var root = el("div", { className: "hb" }, [tab, box]);
  doc.body.appendChild(root);

  // --- state -----------------------------------------------------------------------
  var storageKey = "habla:" + site;
  var stored = load();
  var state = {
    token: stored.token || "", conversation: "", after: 0, online: false, ready: false,
    // Embedded, the frame stays hidden until the site's theme arrives (no flash of defaults).
    expanded: mode !== "embed" || !!stored.expanded, hidden: false, themed: mode !== "embed", unread: 0, operatorName: "",
    texts: {}, historyLoaded: false,
  };
  var pending = {}; // message_id -> {body, node, timer}: sent, not yet confirmed
  var drawn = {}; // message_id -> bubble of a line this page sent, until the log echoes it
  var bubbles = {}; // message_id -> bubble of every line shown (ticks and edits find them here)
  var handlers = {};

  function load() {
    try { return JSON.parse(host.localStorage.getItem(storageKey) || "{}") || {}; } catch (e) { return {}; }
  }
  function save() {
    if (mode === "preview") return;
    try { host.localStorage.setItem(storageKey, JSON.stringify({ token: state.token, expanded: state.expanded })); } catch (e) { /* private mode */ }
  }

  function uuid() {
    var c = window.crypto;
    if (c && c.randomUUID) return c.randomUUID();
    var b = new Uint8Array(16); c.getRandomValues(b);
    return Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join("");
  }

  // --- events for the host page (habla('api.chat.onReady', fn) …) ----------------------
  function on(name, fn) {
    if (typeof fn !== "function") return;
    (handlers[name] = handlers[name] || []).push(fn);
    if (name === "ready" && state.ready) call(fn, {});
  }
  function call(fn, payload) { try { fn(payload); } catch (e) { if (host.console) host.console.error(e); } }
  function emit(name, payload) { (handlers[name] || []).forEach(function (fn) { call(fn, payload || {}); }); }

  // --- theme -------------------------------------------------------------------------
  function applyTheme(theme) {
    var colours = (theme && theme.colours) || {};
    for (var key in colours) {
      if (typeof colours[key] === "string" && COLOUR_RE.test(colours[key]) && /^[a-z_]+$/.test(key)) {
        doc.documentElement.style.setProperty("--habla-" + key.replace(/_/g, "-"), colours[key]);
      }
    }
    var texts = (theme && theme.texts) || {};
    for (var name in texts) if (typeof texts[name] === "string") state.texts[name] = texts[name];
    var t = state.texts;
    tabTitle.textContent = t.welcome_title || "Chat with us";
    title.textContent = t.welcome_title || "Chat with us";
    input.setAttribute("placeholder", t.input_placeholder || "");
    awayText.textContent = t.away_message || "";
    nameLabel.textContent = t.offline_name_label || "Your name";
    emailLabel.textContent = t.offline_email_label || "Your email";
    bodyLabel.textContent = t.offline_message_label || "Message";
    if (welcome) welcome.textContent = t.welcome_message || "";
    showStatus();
  }
  var welcome = el("div", { className: "hb-system hb-welcome" });
  logBox.appendChild(welcome);

  // --- layout ------------------------------------------------------------------------
  function layout() {
    root.className = "hb" + (state.expanded ? " open" : "");
    tab.setAttribute("aria-expanded", state.expanded ? "true" : "false");
    unreadBadge.textContent = String(state.unread);
    if (state.unread > 0 && !state.expanded) unreadBadge.removeAttribute("hidden"); else unreadBadge.setAttribute("hidden", "");
    if (!frame) return;
    var phone = host.innerWidth <= PHONE_MAX_W;
    var s = frame.style;
    s.display = state.hidden || !state.themed ? "none" : "block";
    if (state.expanded && phone) { s.width = "100%"; s.height = "100%"; s.right = "0"; }
    else if (state.expanded) { s.width = BOX_W + "px"; s.height = Math.min(BOX_H, host.innerHeight) + "px"; s.right = "16px"; }
    else { s.width = TAB_W + "px"; s.height = TAB_H + "px"; s.right = phone ? "0" : "16px"; }
  }
  function expand() {
    if (state.expanded) return;
    state.expanded = true; state.unread = 0; save(); layout(); emit("expand");
    (offlineForm.hidden ? input : nameInput).focus();
    scrollDown();
  }
  function shrink() {
    if (!state.expanded || mode !== "embed") return;
    state.expanded = false; save(); layout(); emit("shrink"); tab.focus();
  }
  tab.addEventListener("click", expand);
  minButton.addEventListener("click", shrink);
  doc.addEventListener("keydown", function (e) { if (e.key === "Escape") shrink(); });
  if (frame) host.addEventListener("resize", layout);

  // --- the conversation --------------------------------------------------------------
  function clock(ms) {
    var d = new Date(ms);
    return ("0" + d.getHours()).slice(-2) + ":" + ("0" + d.getMinutes()).slice(-2);
  }
  function scrollDown() { logBox.scrollTop = logBox.scrollHeight; }
  function bubble(sender, body, who, ms) {
    var node = el("div", { className: "hb-msg " + sender });
    if (who) node.appendChild(el("span", { className: "hb-who", text: who }));
    node.appendChild(el("span", { className: "hb-body" }));
    node.appendChild(el("time", { className: "hb-time", text: clock(ms || Date.now()) }));
    setBody(node, body, who || (sender.indexOf("visitor") === 0 ? nameInput.value || "You" : ""));
    logBox.appendChild(node);
    scrollDown();
    return node;
  }
  // XEP-0245: "/me waves" is an action, shown as "* Alice waves".
  function setBody(node, body, who) {
    var action = body.indexOf("/me ") === 0 && body.slice(4).trim() ? body.slice(4) : null;
    node.querySelector(".hb-body").textContent = action === null ? body : "* " + who + " " + action;
    if (action === null) node.classList.remove("action"); else node.classList.add("action");
  }
  // XEP-0308: the operator corrected a line: new text in place, marked "(edited)".
  function edit(node, body) {
    var who = node.querySelector(".hb-who");
    setBody(node, body, who ? who.textContent : "");
    if (!node.querySelector(".hb-edited")) node.querySelector(".hb-time").appendChild(el("span", { className: "hb-edited", text: " (edited)" }));
  }
  function systemLine(text) {
    logBox.appendChild(el("div", { className: "hb-system", text: text }));
    scrollDown();
  }
  function showEntries(event) {
    if (event.conversation_id !== state.conversation) { state.conversation = event.conversation_id; state.after = 0; }
    (event.entries || []).forEach(function (entry) {
      if (entry.seq <= state.after) return; // already shown: never twice
      state.after = entry.seq;
      if (entry.kind === "receipt") { received(entry.receipt_for); return; }
      // Our own line back from the log is already drawn; it is NOT confirmed by this:
      // the log holds it before the broker does, so only the server's "sent" (or the
      // POST's 200) settles it, and until then it is resent with the same id.
      if (drawn[entry.message_id]) { bubbles[entry.message_id] = drawn[entry.message_id]; delete drawn[entry.message_id]; return; }
      // After Redis lost data, a line archived late is put back at the end of the log
      // under a new seq (cursors are past its old one): the same id is shown once.
      if (entry.message_id && bubbles[entry.message_id]) return;
      if (entry.kind === "system") { systemLine(entry.body); endButton.setAttribute("hidden", ""); return; }
      if (entry.replaces && bubbles[entry.replaces]) {
        edit(bubbles[entry.replaces], entry.body); bubbles[entry.message_id] = bubbles[entry.replaces];
        showTyping(false); return;
      }
      if (entry.sender === "operator") {
        if (entry.operator_name) { state.operatorName = entry.operator_name; showStatus(); }
        bubbles[entry.message_id] = bubble("operator", entry.body, entry.operator_name || "", entry.sent_at_ms);
        if (entry.replaces) edit(bubbles[entry.message_id], entry.body); // its original is not shown here
        showTyping(false);
        if (state.historyLoaded) {
          if (!state.expanded) { state.unread += 1; layout(); }
          emit("messageToVisitor", { message: { body: entry.body, operatorName: entry.operator_name || "" } });
        }
      } else {
        bubbles[entry.message_id] = bubble("visitor", entry.body, "", entry.sent_at_ms);
      }
      endButton.removeAttribute("hidden");
    });
  }
  // The operator's XMPP client acknowledged the visitor's line (XEP-0184): a tick.
  function received(id) {
    var node = bubbles[id];
    if (!node || / received/.test(node.className)) return;
    node.className += " received";
    var time = node.querySelector(".hb-time");
    if (time) time.appendChild(el("span", { className: "hb-tick", title: "Delivered", "aria-label": "delivered", text: " \u2713" }));
  }
  var typingTimer = null;
  function showTyping(on) {
    clearTimeout(typingTimer);
    typingLine.textContent = on ? (state.operatorName || "The operator") + " is typing\u2026" : "";
    if (on) typingTimer = setTimeout(function () { showTyping(false); }, TYPING_SHOWN_MS);
  }
  function showStatus() {
    var offline = !state.online;
    subtitle.textContent = state.online ? (state.operatorName ? state.operatorName : "We're online") : "We're away";
    if (offline && offlineDone.hidden) { offlineForm.removeAttribute("hidden"); sendForm.setAttribute("hidden", ""); }
    else if (!offline) { offlineForm.setAttribute("hidden", ""); sendForm.removeAttribute("hidden"); }
    else { offlineForm.setAttribute("hidden", ""); sendForm.setAttribute("hidden", ""); }
  }
  function setStatus(status) {
    var was = state.online;
    state.online = !!(status && status.online);
    showStatus();
    if (state.ready && was !== state.online) emit(state.online ? "operatorsAvailable" : "operatorsAway");
  }
  function handle(event) {
    if (event.type === "entries") showEntries(event);
    else if (event.type === "synced") state.historyLoaded = true;
    else if (event.type === "status") setStatus(event);
    else if (event.type === "theme") applyTheme(event.theme);
    else if (event.type === "typing") showTyping(!!event.typing);
    else if (event.type === "push") pushed(event.url);
    else if (event.type === "sent") settle(event.message_id);
    else if (event.type === "error" && event.message_id) failed(event.message_id, event);
  }
  function pushed(url) {
    if (!/^https?:\/\//i.test(String(url))) return;
    // A page of the visitor's own site: go there (the operator's !push). Any other
    // site only as a link the visitor may follow: an operator must not be able to send
    // visitors somewhere else without their say.
    var target = el("a", { href: url });
    if (target.host === host.location.host) { host.location.assign(target.href); return; }
    var line = el("div", { className: "hb-system" }, [doc.createTextNode("The operator suggests: ")]);
    var link = el("a", { href: url, target: "_top", rel: "noopener", text: url });
    line.appendChild(link);
    logBox.appendChild(line);
    scrollDown();
  }

  // --- talking to the server ---------------------------------------------------------
  function request(method, path, body) {
    // text/plain: a "simple" request, so the browser sends no CORS preflight.
    return fetch(api + path, {
      method: method, mode: "cors", credentials: "omit",
      headers: body ? { "Content-Type": "text/plain;charset=UTF-8" } : {},
      body: body ? JSON.stringify(body) : undefined,
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok) { var err = new Error(data.error || ("HTTP " + response.status)); err.status = response.status; err.retryAfter = response.headers.get("Retry-After"); throw err; }
        return data;
      });
    });
  }

  function start() {
    if (mode === "preview") {
      return request("GET", "/widget").then(function (data) {
        applyTheme(data.theme); state.online = !config.offline; showStatus(); sample(); ready();
      });
    }
    return request("POST", "/session", { token: state.token, page: pageInfo() }).then(function (data) {
      state.token = data.token; save();
      if (data.max_message_chars) { input.maxLength = data.max_message_chars; bodyInput.maxLength = data.max_message_chars; }
      var known = data.visitor || {};
      if (known.name && !nameInput.value) nameInput.value = known.name;
      if (known.email && !emailInput.value) emailInput.value = known.email;
      applyTheme(data.theme);
      setStatus(data.status);
      state.themed = true; layout();
      ready();
      connect();
    }, function (err) {
      if (err.status === 403 || err.status === 404) { // a wrong snippet: say so once, show nothing
        if (host.console) host.console.warn("habla: " + err.message);
        return;
      }
      setTimeout(start, backoff());
    });
  }
  function ready() { state.ready = true; emit("ready"); }
  function pageInfo() { return { url: host.location.href, title: host.document.title, referrer: host.document.referrer }; }
  var renewing = null;
  function renew() { // the session expired (30 idle minutes): same visitor, new session
    if (!renewing) {
      renewing = request("POST", "/session", { token: state.token, page: pageInfo() }).then(function (data) {
        state.token = data.token; save(); setStatus(data.status); renewing = null;
      }, function () { renewing = null; });
    }
    return renewing;
  }

  var socket = null, wsFailures = 0, delay = BACKOFF_MIN_MS, pingTimer = null, polling = false;
  function backoff() { var d = delay; delay = Math.min(delay * 2, BACKOFF_MAX_MS); return d; }
  function cursor() {
    return "token=" + encodeURIComponent(state.token) + "&conversation_id=" + encodeURIComponent(state.conversation) + "&after=" + state.after;
  }
  function connect() {
    if (polling || !window.WebSocket || wsFailures >= WS_FAILURES_BEFORE_POLL) { polling = true; return poll(); }
    var opened = false;
    socket = new WebSocket(api.replace(/^http/, "ws") + "/ws?" + cursor());
    socket.onopen = function () {
      opened = true; wsFailures = 0; delay = BACKOFF_MIN_MS;
      pingTimer = setInterval(function () { wsSend({ type: "ping" }); }, PING_MS);
      for (var id in pending) transmit(id);
    };
    socket.onmessage = function (m) { try { handle(JSON.parse(m.data)); } catch (e) { /* ignore a bad frame */ } };
    socket.onclose = function (e) {
      clearInterval(pingTimer); socket = null;
      if (e.code === SESSION_EXPIRED) { renew().then(connect); return; }
      if (!opened) wsFailures += 1;
      setTimeout(connect, opened ? BACKOFF_MIN_MS : backoff());
    };
  }
  function wsSend(obj) {
    if (socket && socket.readyState === 1) { socket.send(JSON.stringify(obj)); return true; }
    return false;
  }
  function poll() {
    request("GET", "/poll?" + cursor()).then(function (data) {
      delay = BACKOFF_MIN_MS;
      (data.events || []).forEach(handle);
      state.historyLoaded = true;
      if (data.conversation_id !== state.conversation) { state.conversation = data.conversation_id; state.after = data.after; }
      else state.after = Math.max(state.after, data.after);
      if (data.status) setStatus(data.status);
      poll();
    }, function (err) {
      if (err.status === 401) renew().then(poll);
      else setTimeout(poll, backoff());
    });
  }

  // --- sending ---------------------------------------------------------------------
  function sendLine(body) {
    body = String(body || "").trim();
    if (!body) return;
    var id = uuid();
    pending[id] = { body: body, node: bubble("visitor pending", body, "", Date.now()), timer: null };
    drawn[id] = pending[id].node;
    emit("messageToOperator", { message: { body: body } });
    typing(false);
    transmit(id);
  }
  function transmit(id) {
    var line = pending[id];
    if (!line) return;
    clearTimeout(line.timer);
    line.timer = setTimeout(function () { transmit(id); }, RESEND_MS);
    if (wsSend({ type: "send", message_id: id, body: line.body })) return;
    request("POST", "/messages", { token: state.token, message_id: id, body: line.body }).then(function () { settle(id); }, function (err) {
      if (err.status) failed(id, { status: err.status, error: err.message, retry_after: err.retryAfter });
    });
  }
  function settle(id) {
    var line = pending[id];
    if (!line) return;
    clearTimeout(line.timer);
    line.node.className = line.node.className.replace(" pending", ""); // keeps a tick that came first
    delete pending[id];
  }
  function failed(id, event) {
    var line = pending[id];
    if (!line) return;
    if (event.status === 401) { renew(); return; } // resent by its timer, under the new session
    if (event.status === 429 || event.status >= 500) { // wait as told, then resend with the same id
      clearTimeout(line.timer);
      line.tries = (line.tries || 0) + 1;
      var told = 1000 * parseInt(event.retry_after, 10);
      var wait = told > 0 ? told : Math.min(RETRY_MAX_MS, RETRY_MIN_MS * Math.pow(2, line.tries - 1));
      line.timer = setTimeout(function () { transmit(id); }, wait + Math.random() * 500);
      return;
    }
    clearTimeout(line.timer);
    delete pending[id];
    line.node.classList.remove("pending"); line.node.classList.add("failed");
    systemLine(event.error || "That message could not be sent.");
  }
  var typingSent = false, typingIdle = null;
  function typing(on) {
    clearTimeout(typingIdle);
    if (on) typingIdle = setTimeout(function () { typing(false); }, TYPING_IDLE_MS);
    if (on === typingSent || mode === "preview") return;
    typingSent = on;
    if (!wsSend({ type: "typing", typing: on })) request("POST", "/typing", { token: state.token, typing: on }).catch(function () {});
  }
  sendForm.addEventListener("submit", function (e) { e.preventDefault(); if (mode !== "preview") sendLine(input.value); input.value = ""; });
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); sendForm.requestSubmit ? sendForm.requestSubmit() : sendForm.dispatchEvent(new Event("submit")); }
  });
  input.addEventListener("input", function () { typing(input.value.length > 0); });
  endButton.addEventListener("click", function () { request("POST", "/end", { token: state.token }).catch(function () {}); });
  offlineForm.addEventListener("submit", function (e) {
    e.preventDefault();
    if (mode === "preview") return;
    offlineError.textContent = "";
    request("POST", "/offline", {
      token: state.token, message_id: uuid(), name: nameInput.value, email: emailInput.value, body: bodyInput.value,
      page_url: host.location.href,
    }).then(function () {
      offlineForm.setAttribute("hidden", "");
      offlineDone.textContent = "Thanks! We'll get back to you by email.";
      offlineDone.removeAttribute("hidden");
      offlineDone.focus();
    }, function (err) { offlineError.textContent = err.message; });
  });

  function sample() {
    bubble("visitor", "Hi! Do you ship to Canada?", "", Date.now() - 60000);
    bubble("operator", "We do: 3-5 business days.", "Alice", Date.now());
  }
  if (mode === "preview") {
    // Only the console that frames this preview may restyle it (the server also allows
    // only that origin as a frame ancestor): any other page's message is ignored.
    window.addEventListener("message", function (e) {
      if (e.origin !== config.console_origin || e.source !== window.parent) return;
      var data = e.data;
      if (data && data.type === "habla:theme" && data.theme && typeof data.theme === "object") applyTheme(data.theme);
    });
  }

  // --- the JavaScript API (habla('api.box.expand') …) ------------------------------------
  function identify(field, value) {
    if (typeof value !== "string" || !state.token) return;
    var body = { token: state.token }; body[field] = value;
    request("POST", "/visitor", body).catch(function () {});
  }
  var methods = {
    "api.box.expand": expand,
    "api.box.shrink": shrink,
    "api.box.show": function () { state.hidden = false; layout(); },
    "api.box.hide": function () { state.hidden = true; layout(); },
    "api.box.onExpand": function (fn) { on("expand", fn); },
    "api.box.onShrink": function (fn) { on("shrink", fn); },
    "api.visitor.updateEmailAddress": function (o) { identify("email", o && o.emailAddress); },
    "api.visitor.updateFullName": function (o) { identify("name", o && o.fullName); },
    "api.visitor.updatePhoneNumber": function (o) { identify("phone", o && o.phoneNumber); },
    "api.chat.sendMessageToVisitor": function (o) {
      var body = o && typeof o.body === "string" ? o.body : "";
      if (body) bubble("operator", body, state.operatorName, Date.now());
    },
    "api.chat.onReady": function (fn) { on("ready", fn); },
    "api.chat.onMessageToVisitor": function (fn) { on("messageToVisitor", fn); },
    "api.chat.onMessageToOperator": function (fn) { on("messageToOperator", fn); },
    "api.chat.onOperatorsAvailable": function (fn) { on("operatorsAvailable", fn); },
    "api.chat.onOperatorsAway": function (fn) { on("operatorsAway", fn); },
  };
  function dispatch(args) {
    var method = methods[args[0]];
    if (method) method(args[1]);
    else if (host.console) host.console.warn("habla: unknown call " + String(args[0]));
  }
  // Calls made before the requests to the server return, but after the code is here.
  function run(args) {
    // Wait for the session before calls that need it; UI calls run at once.
    if (/^api\.visitor\./.test(args[0]) && !state.ready) { on("ready", function () { dispatch(args); }); return; }
    dispatch(args);
  }
  var facade = function () { run(Array.prototype.slice.call(arguments)); };
  if (!config) {
    facade.site = site; facade.base = host.habla.base; facade.loading = 1; facade.q = { push: run };
    host.habla = facade;
  } else {
    window.habla = facade;
  }
  applyTheme({});
  layout();
  for (var i = 0; i < queue.length; i++) run(Array.prototype.slice.call(queue[i]));
  start();
})();
