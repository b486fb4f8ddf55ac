// Models: each hive's catalog (what it has fetched, its size, format, source and digest) and the workers that
// load one, from the queen's status stream.

import { OPERATOR, live } from "./api.js";
import { bytes, h, notice, replace, table } from "./dom.js";

export const role = OPERATOR;
export const title = "Models";

function row(entry, workers) {
  const loading = workers.filter((worker) => worker.model === entry.name && worker.state === "loading");
  return h(
    "tr",
    { dataset: { model: entry.name } },
    h("th", { scope: "row" }, entry.name),
    h("td", { class: "num" }, bytes(entry.size_bytes)),
    h("td", {}, entry.format),
    h("td", { class: "source" }, entry.source),
    h("td", { class: "digest" }, entry.sha256 ? entry.sha256.slice(0, 12) : "–"),
    h("td", {}, entry.managed ? "rbee" : "by hand"),
    h(
      "td",
      {},
      `${workers.filter((worker) => worker.model === entry.name).length} workers`,
      loading.map((worker) => h("progress", { max: 1, value: worker.progress ?? undefined, "aria-label": `${worker.id} loading` })),
    ),
  );
}

export function mount(view, context) {
  const body = h("div", {});
  replace(view, h("h1", {}, "Models"), body);
  live(OPERATOR, "/v2/status?follow=1", context, {
    onEvent: (snapshot) => {
      const hives = snapshot.hives.filter((hive) => hive.state);
      replace(
        body,
        hives.length ? null : notice("No hive is running."),
        hives.map((hive) =>
          table(
            `Catalog of ${hive.name}`,
            ["Model", "Size", "Format", "Source", "sha256", "Managed by", "Workers"],
            hive.state.catalog.map((entry) => row(entry, hive.state.workers)),
            { class: "catalog" },
          ),
        ),
      );
    },
  });
}
