// Models: each hive's catalog (what it has fetched, its size, format, source and digest), the fetches running
// now with their progress (the reconcile loop's and the operator's), Pull (a model of hive.yaml onto a hive now)
// and Remove (refused by the hive while a worker uses the model, with the same sentence as rbee models rm).

import { OPERATOR, Unauthorized, json, live } from "./api.js";
import { bytes, h, notice, replace, table } from "./dom.js";

export const role = OPERATOR;
export const title = "Models";

// What a model file says of itself (gguf headers): `llama, Q4_1, 135M weights, 8,192 context`.
function facts(entry) {
  const parts = [entry.architecture, entry.quantization];
  if (entry.parameters) parts.push(entry.parameters >= 1e9 ? `${(entry.parameters / 1e9).toFixed(1)}B weights` : `${Math.round(entry.parameters / 1e6)}M weights`);
  if (entry.context_length) parts.push(`${entry.context_length.toLocaleString("en")} context`);
  return parts.filter(Boolean).join(", ") || "–";
}

function fetchRow(fetch) {
  const known = fetch.total > 0;
  return h(
    "tr",
    { dataset: { fetch: `${fetch.hive}/${fetch.model}`, state: fetch.state } },
    h("th", { scope: "row" }, fetch.model),
    h("td", {}, fetch.hive),
    h("td", {}, fetch.by),
    h(
      "td",
      {},
      fetch.state === "fetching" && known ? h("progress", { max: fetch.total, value: fetch.bytes, "aria-label": `${fetch.model} on ${fetch.hive}` }) : null,
      fetch.state === "fetching" && !known ? h("progress", { "aria-label": `${fetch.model} on ${fetch.hive}` }) : null,
      h("span", { class: "dim" }, known ? `${bytes(fetch.bytes)} of ${bytes(fetch.total)}` : fetch.stage),
    ),
    h("td", {}, fetch.error ? h("span", { class: "badge bad", title: fetch.error }, "failed") : h("span", { class: `badge ${fetch.state === "done" ? "good" : "wait"}` }, fetch.state), fetch.error ? h("div", { class: "dim" }, fetch.error) : null),
  );
}

export function mount(view, context) {
  const problem = h("div", { "aria-live": "assertive" });
  const fetches = h("div", {});
  const body = h("div", {});
  const modelChoice = h("select", { id: "pull-model", name: "model", required: true });
  const hiveChoice = h("select", { id: "pull-hive", name: "hive", required: true });

  function failed(error) {
    if (error instanceof Unauthorized) context.refused(OPERATOR);
    else if (error.name !== "AbortError") replace(problem, notice(error.message, "error"));
  }

  async function pull(event) {
    event.preventDefault();
    replace(problem);
    try {
      await json(OPERATOR, `/v2/models/${encodeURIComponent(modelChoice.value)}/pull`, { method: "POST", body: { hive: hiveChoice.value }, signal: context.signal });
    } catch (error) {
      failed(error);
    }
  }

  // Which removals wait for their confirmation: kept apart from the page, which the status stream redraws.
  const confirming = new Set();
  let latest = null;

  function removeControl(hive, entry) {
    const key = `${hive}/${entry.name}`;
    const toggle = (on) => {
      if (on) confirming.add(key);
      else confirming.delete(key);
      if (latest) draw(latest);
    };
    if (!confirming.has(key)) {
      return h("button", { type: "button", class: "quiet", dataset: { remove: key }, onclick: () => toggle(true) }, "Remove…");
    }
    return h(
      "span",
      { class: "confirm-inline" },
      `Remove ${entry.name} from ${hive}? `,
      h(
        "button",
        {
          type: "button",
          dataset: { confirmRemove: key },
          onclick: async () => {
            replace(problem);
            try {
              await json(OPERATOR, `/v2/models/${encodeURIComponent(entry.name)}?hive=${encodeURIComponent(hive)}`, { method: "DELETE", signal: context.signal });
            } catch (error) {
              failed(error);
            }
            toggle(false);
          },
        },
        "Remove",
      ),
      " ",
      h("button", { type: "button", class: "quiet", onclick: () => toggle(false) }, "Keep"),
    );
  }

  function catalogRow(hive, entry, workers) {
    const using = workers.filter((worker) => worker.model === entry.name);
    return h(
      "tr",
      { dataset: { model: entry.name } },
      h("th", { scope: "row" }, entry.name),
      h("td", { class: "num" }, bytes(entry.size_bytes)),
      h("td", {}, entry.format),
      h("td", { class: "facts" }, facts(entry)),
      h("td", { class: "source" }, entry.source),
      h("td", { class: "digest" }, entry.sha256 ? entry.sha256.slice(0, 12) : "–"),
      h("td", {}, entry.managed ? "rbee" : "by hand"),
      h("td", { class: "num" }, using.length),
      h("td", {}, entry.managed ? removeControl(hive, entry) : null),
    );
  }

  replace(
    view,
    h("h1", {}, "Models"),
    h(
      "form",
      { class: "pull", onsubmit: pull },
      h("div", { class: "knobs" }, h("div", { class: "field" }, h("label", { for: "pull-model" }, "Model"), modelChoice), h("div", { class: "field" }, h("label", { for: "pull-hive" }, "Hive"), hiveChoice)),
      h("p", { class: "hint" }, "Pull fetches a model of hive.yaml onto a hive now; it stays there while hive.yaml names it, even where no worker uses it."),
      h("div", { class: "actions" }, h("button", { type: "submit", id: "pull" }, "Pull")),
    ),
    problem,
    fetches,
    body,
  );
  json(OPERATOR, "/v2/spec", { signal: context.signal })
    .then((applied) => {
      const spec = applied.spec ?? { models: [], hives: [] };
      replace(modelChoice, spec.models.map((model) => h("option", { value: model.name }, model.name)));
      replace(hiveChoice, spec.hives.map((hive) => h("option", { value: hive.name }, hive.name)));
    })
    .catch(failed);
  function draw(snapshot) {
    latest = snapshot;
    replace(fetches, snapshot.fetches.length ? table("Fetching", ["Model", "Hive", "By", "Progress", "State"], snapshot.fetches.map(fetchRow), { class: "fetches" }) : null);
      const hives = snapshot.hives.filter((hive) => hive.state);
      replace(
        body,
        hives.length ? null : notice("No hive is running."),
        hives.map((hive) =>
          table(
            `Catalog of ${hive.name}`,
            ["Model", "Size", "Format", "Model file", "Source", "sha256", "Managed by", "Workers", ""],
            hive.state.catalog.map((entry) => catalogRow(hive.name, entry, hive.state.workers)),
            { class: "catalog", dataset: { hive: hive.name } },
          ),
        ),
      );
  }

  live(OPERATOR, "/v2/status?follow=1", context, { onEvent: draw });
}
