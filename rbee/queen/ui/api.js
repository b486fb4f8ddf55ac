// Talking to the queen: the same APIs the CLI uses, with the credential of the role a page needs. The operator's
// credential opens the fleet's pages; an API key opens the playground. Each is asked for once and kept in this
// tab's session storage only (gone when the tab closes), never in the address or a cookie.

import { h, notice, replace } from "./dom.js";

export const OPERATOR = "operator";
export const CLIENT = "client";

const ROLES = {
  [OPERATOR]: {
    label: "Operator credential",
    hint: "rbee key --operator prints it on the operator's machine. It opens every page of this UI.",
    check: "/v2/status",
  },
  [CLIENT]: {
    label: "API key",
    hint: "rbee key prints the admin API key; any key from hive.yaml works for the models it may use.",
    check: "/v1/models",
  },
};

const storageKey = (role) => `rbee.${role}`;

export function credential(role) {
  return sessionStorage.getItem(storageKey(role));
}

export function forget(role) {
  sessionStorage.removeItem(storageKey(role));
}

export class Unauthorized extends Error {
  constructor(role) {
    super(`the ${ROLES[role].label.toLowerCase()} was refused`);
    this.role = role;
  }
}

export class Refused extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

async function refusal(response) {
  let message = `${response.status} ${response.statusText}`;
  let body = null;
  try {
    body = await response.json();
    message = body?.error?.message ?? body?.message ?? message;
  } catch {
    // not JSON: the status line says enough
  }
  return new Refused(response.status, message, body);
}

export async function call(role, path, { method = "GET", body, signal } = {}) {
  const options = { method, headers: { Authorization: `Bearer ${credential(role) ?? ""}` }, signal, cache: "no-store" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (response.status === 401) {
    forget(role);
    throw new Unauthorized(role);
  }
  if (!response.ok) throw await refusal(response);
  return response;
}

export async function json(role, path, options) {
  return (await call(role, path, options)).json();
}

// Server-Sent Events over fetch (EventSource cannot send an Authorization header). Calls onEvent with each
// event's data, parsed as JSON, and onComment with each comment line; resolves when the stream ends.
export async function follow(role, path, { onEvent, onComment = () => {}, signal, method, body }) {
  const response = await call(role, path, { signal, method, body });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    pending += value;
    let end;
    while ((end = pending.indexOf("\n\n")) >= 0) {
      const block = pending.slice(0, end);
      pending = pending.slice(end + 2);
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) onComment(line.slice(1).trim());
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(JSON.parse(data.join("\n")));
    }
  }
}

// The sign-in form for `role`, drawn into `view`; calls `done` once the queen accepted the credential.
export function signIn(view, role, done, reason = "") {
  const { label, hint, check } = ROLES[role];
  const input = h("input", {
    id: "credential",
    name: "credential",
    type: "password",
    autocomplete: "off",
    required: true,
    spellcheck: "false",
    "aria-describedby": "credential-hint",
  });
  const status = h("div", { "aria-live": "polite" });
  const form = h(
    "form",
    {
      class: "sign-in",
      "data-role": role,
      onsubmit: async (event) => {
        event.preventDefault();
        sessionStorage.setItem(storageKey(role), input.value.trim());
        try {
          await call(role, check);
          done();
        } catch (error) {
          forget(role);
          replace(status, notice(error instanceof Unauthorized ? `The queen refused that ${label.toLowerCase()}.` : error.message, "error"));
        }
      },
    },
    h("h1", {}, "Sign in"),
    reason ? notice(reason) : null,
    h("label", { for: "credential" }, label),
    input,
    h("p", { id: "credential-hint", class: "hint" }, hint),
    h("button", { type: "submit" }, "Sign in"),
    status,
  );
  replace(view, form);
  input.focus();
}

// `follow`, kept open for as long as the page is shown: a stream that drops (the queen restarted, the network
// blinked) is opened again after RETRY_MS, and `onLink` says whether the page is live.
const RETRY_MS = 2000;

export async function live(role, path, context, { onEvent, onLink = () => {} }) {
  while (!context.signal.aborted) {
    try {
      await follow(role, path, {
        signal: context.signal,
        onEvent: (data) => {
          onLink(true);
          onEvent(data);
        },
      });
    } catch (error) {
      if (context.signal.aborted) return;
      if (error instanceof Unauthorized) {
        context.refused(role);
        return;
      }
    }
    onLink(false);
    await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
  }
}
