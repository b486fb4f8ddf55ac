// Events: the queen's event log (what it applied, started, lost and healed), live from GET /v2/events?follow=1,
// filtered here by kind and by hive (the hive a target names).

import { OPERATOR, live } from "./api.js";
import { clock, h, replace } from "./dom.js";

export const role = OPERATOR;
export const title = "Events";

const KEPT = 1000;

function hiveOf(item) {
  const match = /hive ([a-z0-9-]+)/.exec(`${item.target} ${item.message}`) ?? /^([a-z0-9-]+)\//.exec(item.target);
  return match ? match[1] : "";
}

function remember(set, select, value) {
  if (!value || set.has(value)) return;
  set.add(value);
  select.append(h("option", { value }, value));
}

export function mount(view, context) {
  const kind = h("select", { id: "kind", name: "kind" }, h("option", { value: "" }, "all kinds"));
  const hive = h("select", { id: "hive", name: "hive" }, h("option", { value: "" }, "all hives"));
  const rows = h("tbody", {});
  let kept = 0;
  const kinds = new Set();
  const hives = new Set();

  function visible({ kind: itemKind, hiveName }) {
    return (!kind.value || itemKind === kind.value) && (!hive.value || hiveName === hive.value);
  }

  function row(item) {
    return h(
      "tr",
      { dataset: { kind: item.kind, hive: hiveOf(item) }, hidden: !visible({ kind: item.kind, hiveName: hiveOf(item) }) },
      h("td", { class: "when" }, h("time", { datetime: new Date(item.at * 1000).toISOString() }, clock(item.at))),
      h("td", {}, item.kind),
      h("td", {}, item.target),
      h("td", {}, item.message),
    );
  }

  function filter() {
    for (const tr of rows.children) tr.hidden = !visible({ kind: tr.dataset.kind, hiveName: tr.dataset.hive });
  }
  kind.addEventListener("change", filter);
  hive.addEventListener("change", filter);

  replace(
    view,
    h("h1", {}, "Events"),
    h("div", { class: "filters" }, h("label", { for: "kind" }, "Kind"), kind, h("label", { for: "hive" }, "Hive"), hive),
    h(
      "table",
      { class: "events" },
      h("caption", {}, "Newest first"),
      h("thead", {}, h("tr", {}, ["When", "Kind", "Target", "Message"].map((name) => h("th", { scope: "col" }, name)))),
      rows,
    ),
  );
  let last = null;
  live(OPERATOR, "/v2/events?follow=1&limit=200", context, {
    onEvent: (item) => {
      if (last !== null && item.id <= last) return; // a reconnect sends the backlog again
      last = item.id;
      kept += 1;
      remember(kinds, kind, item.kind);
      remember(hives, hive, hiveOf(item));
      rows.prepend(row(item));
      if (kept > KEPT) {
        kept -= 1;
        rows.lastElementChild.remove();
      }
    },
  });
}
