// The bills' reader page: pay a utility bill from the card purse, the portal being the terminal.
//
// docs/utility-bills.md, "Paying from the purse". The portal runs the purchase and its PSAM; this
// script only carries each card command the portal answers (/api/bills/purse/<run>) to the reader
// agent's purse relay (/apdu/<id>/transmit) and the card's answer back. It decides nothing: the
// agent refuses anything but purse commands, and clearing checks the card's TAC. No inline script
// or style (CSP script-src 'self'); every word shown comes from <template id="bills-words">.
"use strict";

(function () {
  const app = document.getElementById("bill-purse-app");
  if (!app) {
    return;
  }
  const agentUrl = app.dataset.agentUrl.replace(/\/+$/, "");
  const billId = Number(app.dataset.billId);
  const chinese = (document.documentElement.lang || "").toLowerCase().startsWith("zh");
  const words = {};
  const template = document.getElementById("bills-words");
  if (template) {
    template.content.querySelectorAll("[data-key]").forEach(function (el) {
      words[el.dataset.key] = el.textContent.trim();
    });
  }
  const STEPS_MAX = 80;
  const AGENT_ERRORS = { E_AGENT_CARD_REMOVED: "card_removed", E_AGENT_NO_CARD: "no_card" };

  function $(id) {
    return document.getElementById(id);
  }

  function say(text) {
    $("purse-status").textContent = text;
  }

  function errorText(body) {
    if (!body) {
      return "";
    }
    const message = chinese && body.message_zh ? body.message_zh : body.message;
    return (message || "") + (body.code ? " (" + body.code + ")" : "");
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch (e) {
      return null;
    }
  }

  async function agent(method, path, body) {
    const init = { method: method, cache: "no-store", credentials: "omit", headers: {} };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(agentUrl + path, init);
    return { status: response.status, body: await readJson(response) };
  }

  let csrfToken = null;

  async function portal(method, path, body) {
    const init = { method: method, cache: "no-store", credentials: "same-origin", headers: {} };
    if (method !== "GET") {
      init.headers["X-CSRF-Token"] = csrfToken || "";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body === undefined ? {} : body);
    }
    const response = await fetch(path, init);
    return { status: response.status, body: await readJson(response) };
  }

  function finish(view) {
    const result = $("purse-result");
    const paidHere = view.outcome === "T_PAID" || (view.outcome === "T_RECOVERED" && view.paid_bill_id === billId);
    const cleared = view.verdict && view.verdict.state === "cleared";
    let text;
    if (view.state === "failed") {
      text = words.refused + " " + errorText(view);
    } else if (paidHere && cleared) {
      text = view.outcome === "T_RECOVERED" ? words.recovered : words.paid;
    } else if (view.outcome === "T_RECOVERED") {
      text = words.recovered + " " + words.again;
    } else if (view.outcome === "T_TAP_AGAIN" || view.outcome === "T_READER_ERROR") {
      text = words.again + " (" + view.message + ")";
    } else {
      text = words.refused + " " + (view.message || "") + (view.verdict ? " (" + view.verdict.code + ")" : "");
    }
    say(text);
    result.dataset.outcome = view.state === "failed" ? view.code : view.outcome;
    result.dataset.paid = paidHere && cleared ? "yes" : "no";
    result.hidden = !(paidHere && cleared);
  }

  async function pay() {
    const button = $("purse-pay");
    button.disabled = true;
    say(words.working);
    let relay = null;
    try {
      const me = await portal("GET", "/api/me");
      csrfToken = me.body && me.body.csrf_token;
      let opened;
      try {
        opened = await agent("POST", "/apdu", {});
      } catch (e) {
        say(words.agent_missing);
        return;
      }
      if (opened.status !== 201) {
        say(errorText(opened.body));
        return;
      }
      relay = opened.body.request_id;
      let answer = await portal("POST", "/api/bills/" + billId + "/purse");
      for (let step = 0; step < STEPS_MAX; step++) {
        const view = answer.body;
        if (answer.status >= 400 || !view) {
          say(words.refused + " " + errorText(view));
          return;
        }
        if (view.state !== "card") {
          finish(view);
          return;
        }
        const sent = await agent("POST", "/apdu/" + encodeURIComponent(relay) + "/transmit", { apdu: view.apdu });
        let body;
        if (sent.status === 200 && sent.body) {
          body = { seq: view.seq, sw: sent.body.sw, data: sent.body.data };
        } else {
          const code = sent.body && sent.body.code;
          body = { seq: view.seq, error: AGENT_ERRORS[code] || "agent" };
        }
        answer = await portal("POST", "/api/bills/purse/" + encodeURIComponent(view.run_id), body);
      }
    } catch (e) {
      say(words.again);
    } finally {
      if (relay) {
        agent("DELETE", "/apdu/" + encodeURIComponent(relay)).catch(function () {});
      }
      button.disabled = false;
    }
  }

  const button = $("purse-pay");
  if (button) {
    button.addEventListener("click", pay);
  }
})();
