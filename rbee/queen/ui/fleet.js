// Fleet: every hive with its devices and conditions, and every worker with what it does now, redrawn from the
// queen's status stream (GET /v2/status?follow=1) as it changes; nothing here polls.

import { OPERATOR, live } from "./api.js";
import { bytes, duration, h, notice, replace, table } from "./dom.js";

export const role = OPERATOR;
export const title = "Fleet";

const READY = new Set(["idle", "busy"]);

function device(item) {
  const memory = item.memory_total ? `${bytes(item.memory_free)} free of ${bytes(item.memory_total)}` : "";
  const name = item.kind === "cpu" ? `CPU ${item.name}`.trim() : `${item.id} ${item.name}`.trim();
  return h("li", {}, name, memory ? h("span", { class: "dim" }, ` · ${memory}`) : null);
}

function conditionBadge(condition) {
  const good = condition.type === "Ready";
  return h("span", { class: `badge ${good ? "good" : "bad"}`, title: condition.message }, `${condition.type}: ${condition.reason}`);
}

function workerRow(worker, route) {
  const ready = READY.has(worker.state);
  return h(
    "tr",
    { dataset: { worker: worker.id, ready: String(ready), state: worker.state } },
    h("th", { scope: "row" }, worker.id),
    h("td", {}, worker.model),
    h("td", {}, worker.backend),
    h("td", {}, worker.device),
    h("td", { class: "num" }, worker.slots),
    h(
      "td",
      {},
      h("span", { class: `badge ${ready ? "good" : worker.state === "loading" ? "wait" : "bad"}` }, ready ? `Ready (${worker.state})` : worker.state),
      worker.state === "loading" && worker.progress !== null ? h("progress", { max: 1, value: worker.progress, "aria-label": "loaded" }) : null,
      worker.reason ? h("div", { class: "dim" }, worker.reason) : null,
    ),
    h("td", { class: "num" }, route ? route.in_flight : "–"),
    h("td", { class: "num" }, route ? route.tokens_per_s.toFixed(1) : "–"),
    h("td", { class: "num" }, duration(worker.uptime)),
  );
}

function hiveSection(hive, snapshot) {
  const state = hive.state;
  const conditions = snapshot.conditions.filter((condition) => condition.hive === hive.name);
  const routes = new Map(snapshot.routes.filter((route) => route.hive === hive.name).map((route) => [route.worker, route]));
  const age = snapshot.heartbeats[hive.name];
  return h(
    "section",
    { class: "hive", "aria-labelledby": `hive-${hive.name}`, dataset: { hive: hive.name, status: hive.status } },
    h(
      "h2",
      { id: `hive-${hive.name}` },
      hive.name,
      " ",
      h("span", { class: `badge ${hive.status === "running" ? "good" : "bad"}` }, hive.status),
    ),
    h("p", { class: "dim connection" }, snapshot.connections?.[hive.name] ?? ""),
    h(
      "p",
      { class: "dim" },
      state ? `rbee ${state.version} · ${state.host.system} ${state.host.machine} · ${state.host.cpu_count} cores` : hive.reason,
      age !== undefined ? ` · heartbeat ${age.toFixed(0)} s ago` : "",
    ),
    state ? h("ul", { class: "devices", "aria-label": "devices" }, state.host.devices.map(device)) : null,
    conditions.length ? h("p", { class: "conditions" }, conditions.map((condition) => [h("span", { class: "target" }, condition.target), " ", conditionBadge(condition), " ", h("span", { class: "dim" }, condition.message), h("br")])) : null,
    state && state.workers.length
      ? table(
          `Workers on ${hive.name}`,
          ["Worker", "Model", "Backend", "Device", "Slots", "State", "In flight", "Tokens/s", "Uptime"],
          state.workers.map((worker) => workerRow(worker, routes.get(worker.id))),
          { class: "workers" },
        )
      : h("p", { class: "dim" }, "No workers."),
  );
}

export function mount(view, context) {
  const link = h("p", { class: "link", "aria-live": "polite" }, "Connecting…");
  const body = h("div", {});
  replace(view, h("h1", {}, "Fleet"), link, body);
  live(OPERATOR, "/v2/status?follow=1", context, {
    onLink: (up) => {
      link.textContent = up ? "Live" : "Reconnecting to the queen…";
      link.className = `link ${up ? "up" : "down"}`;
    },
    onEvent: (snapshot) => {
      const queued = Object.entries(snapshot.queues).filter(([, depth]) => depth > 0);
      replace(
        body,
        snapshot.hives.length ? snapshot.hives.map((hive) => hiveSection(hive, snapshot)) : notice("No hives yet: rbee apply hive.yaml adds them."),
        queued.length ? h("p", {}, "Queued: ", queued.map(([model, depth]) => `${model} ${depth}`).join(", ")) : null,
        h("p", { class: "dim" }, `Spec generation ${snapshot.generation} · reconcile pass ${snapshot.reconcile.passes}${snapshot.reconcile.suspended ? " (suspended)" : ""}`),
      );
    },
  });
}
