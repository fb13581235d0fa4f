// The reader page's script: card login and online load through the reader agent on this computer.
//
// docs/portal.md, "Reader agent" and "Online load on the reader page". The page talks to two
// places: the reader agent (data-agent-url, CORS, no cookies) and this site's /api (same origin,
// the session cookie, X-CSRF-Token on every POST). The PIN is typed on the agent's own page and
// never passes through here. For a load the agent runs the card and this script only carries the
// agent's host calls to /api/loads and the answers back; it decides nothing. No inline script or
// style anywhere (CSP script-src 'self'); every word shown comes from <template id="reader-words">.
"use strict";

(function () {
  const app = document.getElementById("reader-app");
  if (!app) {
    return;
  }
  const agentUrl = app.dataset.agentUrl.replace(/\/+$/, "");
  const terminalId = app.dataset.terminalId;
  const chinese = (document.documentElement.lang || "").toLowerCase().startsWith("zh");
  const words = {};
  const wordsTemplate = document.getElementById("reader-words");
  if (wordsTemplate) {
    wordsTemplate.content.querySelectorAll("[data-key]").forEach(function (el) {
      words[el.dataset.key] = el.textContent.trim();
    });
  }
  const WAIT_MS = 5000;
  const HOST_PATH = /^\/api\/loads\/[A-Za-z0-9_.:\/-]{1,200}$/;
  let csrfToken = null;

  function $(id) {
    return document.getElementById(id);
  }

  function say(id, text) {
    const el = $(id);
    if (el) {
      el.textContent = text;
    }
  }

  function errorText(error) {
    if (!error) {
      return "";
    }
    const message = chinese && error.message_zh ? error.message_zh : error.message;
    return (message || "") + (error.code ? " (" + error.code + ")" : "");
  }

  function yuan(fen) {
    const whole = Math.floor(fen / 100);
    const cents = String(fen % 100).padStart(2, "0");
    return whole + "." + cents + " " + (words.yuan || "");
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch (e) {
      return null;
    }
  }

  // --- the reader agent (CORS, no credentials) ---

  async function agent(method, path, body) {
    const init = { method: method, cache: "no-store", credentials: "omit", headers: {} };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(agentUrl + path, init);
    return { status: response.status, body: await readJson(response) };
  }

  // --- this site's /api (same origin, session cookie, CSRF token) ---

  async function portal(method, path, body) {
    const init = { method: method, cache: "no-store", credentials: "same-origin", headers: {} };
    if (method !== "GET") {
      if (csrfToken) {
        init.headers["X-CSRF-Token"] = csrfToken;
      }
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body === undefined ? null : body);
    }
    const response = await fetch(path, init);
    return { status: response.status, body: await readJson(response) };
  }

  async function loadSession() {
    const me = await portal("GET", "/api/me");
    csrfToken = me.status === 200 && me.body ? me.body.csrf_token : null;
    return csrfToken !== null;
  }

  // --- the agent's status ---

  async function checkAgent() {
    try {
      const status = await agent("GET", "/status");
      if (status.status !== 200 || !status.body) {
        say("agent-status", words.agent_missing);
        return false;
      }
      const readers = status.body.readers || [];
      say("agent-status", readers.length ? words.agent_ready + " " + readers.join(", ") : words.agent_no_reader);
      return true;
    } catch (e) {
      say("agent-status", words.agent_missing);
      return false;
    }
  }

  // --- card login ---

  let signRequest = null;

  async function cardLogin() {
    const button = $("card-login");
    button.disabled = true;
    $("login-pin").hidden = true;
    say("login-status", words.login_starting);
    try {
      const challenge = await portal("GET", "/api/card-login/challenge");
      if (challenge.status !== 200) {
        say("login-status", words.failed + " " + errorText(challenge.body));
        return;
      }
      const started = await agent("POST", "/sign", { nonce: challenge.body.nonce });
      if (started.status !== 201) {
        say("login-status", words.failed + " " + errorText(started.body));
        return;
      }
      signRequest = started.body.request_id;
      const link = $("pin-link");
      link.href = started.body.pin_url;
      $("login-pin").hidden = false;
      $("login-cancel").hidden = false;
      say("login-status", words.login_pin);
      const token = await waitForSignature(signRequest);
      if (token) {
        const login = await portal("POST", "/api/card-login", token);
        if (login.status === 201) {
          csrfToken = login.body.csrf_token;
          app.dataset.signedIn = "yes";
          say("login-status", words.login_done);
          await refreshLoads();
        } else {
          say("login-status", words.failed + " " + errorText(login.body));
        }
      }
    } catch (e) {
      say("login-status", words.agent_missing);
    } finally {
      signRequest = null;
      button.disabled = false;
      $("login-pin").hidden = true;
      $("login-cancel").hidden = true;
    }
  }

  async function waitForSignature(requestId) {
    let seen = -1;
    for (;;) {
      const polled = await agent("GET", "/sign/" + encodeURIComponent(requestId) + "?wait_ms=" + WAIT_MS + "&seen=" + seen);
      if (polled.status !== 200 || !polled.body) {
        say("login-status", words.failed + " " + errorText(polled.body));
        return null;
      }
      const state = polled.body;
      seen = state.version;
      if (state.state === "done") {
        return state.token;
      }
      if (state.state === "failed") {
        say("login-status", errorText(state.error));
        return null;
      }
      if (state.state === "cancelled") {
        say("login-status", words.login_cancelled);
        return null;
      }
      say("login-status", state.error ? errorText(state.error) : state.state === "working" ? words.login_working : words.login_pin);
    }
  }

  async function cancelLogin() {
    if (signRequest) {
      await agent("DELETE", "/sign/" + encodeURIComponent(signRequest));
    }
  }

  // --- online load ---

  async function refreshLoads() {
    const list = $("load-pending");
    list.replaceChildren();
    const overview = await portal("GET", "/api/loads");
    if (overview.status !== 200 || !overview.body) {
      say("load-status", overview.status === 401 ? words.login_first : words.failed + " " + errorText(overview.body));
      return;
    }
    let count = 0;
    overview.body.cards.forEach(function (card) {
      card.loads.forEach(function (load) {
        const item = document.createElement("li");
        item.dataset.loadId = load.load_id;
        item.textContent = card.card_asn + ": " + yuan(load.amount_fen) + " (" + (words["state_" + load.state] || load.state) + ")";
        list.appendChild(item);
        count += 1;
      });
    });
    if (count === 0) {
      const item = document.createElement("li");
      item.textContent = words.load_none;
      list.appendChild(item);
    }
  }

  async function relay(call) {
    // Only this site's load routes, only GET and POST: the agent cannot make the page call anything else.
    if (!HOST_PATH.test(call.path) || (call.method !== "GET" && call.method !== "POST")) {
      return { status: 400, body: { code: "E_PORTAL_MALFORMED", message: "not a load route" } };
    }
    try {
      const answer = await portal(call.method, call.path, call.body === null ? undefined : call.body);
      return { status: answer.status, body: answer.body };
    } catch (e) {
      return { status: 503, body: { code: "E_PORTAL_UNAVAILABLE", message: "the portal did not answer" } };
    }
  }

  function showResults(report) {
    const list = $("load-results");
    list.replaceChildren();
    report.results.forEach(function (result) {
      const item = document.createElement("li");
      item.dataset.loadId = result.load_id;
      item.dataset.outcome = result.outcome;
      item.textContent = yuan(result.amount_fen) + ": " + (words["outcome_" + result.outcome] || result.outcome);
      list.appendChild(item);
    });
    if (report.balance_fen !== null && report.balance_fen !== undefined) {
      const item = document.createElement("li");
      item.id = "load-balance";
      item.textContent = words.balance + " " + yuan(report.balance_fen);
      list.appendChild(item);
    }
  }

  async function loadOntoCard() {
    const button = $("load-start");
    button.disabled = true;
    $("load-results").replaceChildren();
    try {
      if (!(await loadSession())) {
        say("load-status", words.login_first);
        return;
      }
      const started = await agent("POST", "/load", { terminal_id: terminalId });
      if (started.status !== 201) {
        say("load-status", words.failed + " " + errorText(started.body));
        return;
      }
      const job = encodeURIComponent(started.body.request_id);
      say("load-status", words.load_working);
      let seen = -1;
      for (;;) {
        const polled = await agent("GET", "/load/" + job + "?wait_ms=" + WAIT_MS + "&seen=" + seen);
        if (polled.status !== 200 || !polled.body) {
          say("load-status", words.failed + " " + errorText(polled.body));
          break;
        }
        const state = polled.body;
        seen = state.version;
        if (state.state === "host_call" && state.call) {
          const answer = await relay(state.call);
          // 409: the agent stopped waiting for this call; it says what happened at the next poll
          await agent("POST", "/load/" + job + "/answer", { seq: state.call.seq, status: answer.status, body: answer.body });
          continue;
        }
        if (state.state === "done") {
          showResults(state.report);
          say("load-status", state.report.results.length ? words.load_done : words.load_nothing);
          break;
        }
        if (state.state === "failed" || state.state === "cancelled") {
          say("load-status", errorText(state.error));
          break;
        }
      }
    } catch (e) {
      say("load-status", words.agent_missing);
    } finally {
      button.disabled = false;
      await refreshLoads();
    }
  }

  // --- wiring ---

  $("agent-check").addEventListener("click", checkAgent);
  if ($("card-login")) {
    $("card-login").addEventListener("click", cardLogin);
    $("login-cancel").addEventListener("click", cancelLogin);
  }
  $("load-start").addEventListener("click", loadOntoCard);
  checkAgent();
  if (app.dataset.signedIn === "yes") {
    loadSession().then(refreshLoads);
  } else {
    say("load-status", words.login_first);
  }
})();
