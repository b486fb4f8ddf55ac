// The shell: one page, a view per address fragment (#/fleet, #/playground ...). Each view module exports
// `role` (whose credential it needs) and `mount(view, context)`, which draws into `view` and returns what stops
// its streams when the user leaves.

import { CLIENT, OPERATOR, credential, forget, signIn } from "./api.js";
import * as events from "./events.js";
import * as fleet from "./fleet.js";
import * as metrics from "./metrics.js";
import * as models from "./models.js";
import * as plan from "./plan.js";
import * as playground from "./playground.js";
import * as routing from "./routing.js";

const VIEWS = { fleet, models, playground, plan, events, metrics, routing };
const view = document.getElementById("view");
let leave = () => {};

function current() {
  const name = location.hash.replace(/^#\/?/, "").split("?")[0];
  return VIEWS[name] ? name : "fleet";
}

function show() {
  leave();
  leave = () => {};
  const name = current();
  const page = VIEWS[name];
  for (const link of document.querySelectorAll("nav a")) {
    if (link.getAttribute("href") === `#/${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `rbee · ${page.title}`;
  if (!credential(page.role)) {
    signIn(view, page.role, show);
    return;
  }
  const controller = new AbortController();
  const context = {
    signal: controller.signal,
    // A credential the queen refused mid-page (rotated, or the queen restarted with another): ask again.
    refused(role) {
      controller.abort();
      signIn(view, role, show, "The queen no longer accepts the credential this tab had. Sign in again.");
    },
  };
  const stop = page.mount(view, context);
  leave = () => {
    controller.abort();
    if (typeof stop === "function") stop();
  };
}

document.getElementById("sign-out").addEventListener("click", () => {
  forget(OPERATOR);
  forget(CLIENT);
  show();
});
window.addEventListener("hashchange", show);
show();
