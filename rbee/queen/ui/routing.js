// Routing: the active policy, and for a sample request the candidates, the pick and why (GET /v2/route, what
// `rbee route --explain` prints).

import { OPERATOR, Unauthorized, json } from "./api.js";
import { h, notice, replace, table } from "./dom.js";

export const role = OPERATOR;
export const title = "Routing";

// Python, coloured by a small tokenizer: comments, strings, numbers, keywords and names, each a text node in a
// span, so the file shows as written and nothing in it becomes markup.
const PYTHON = /(#[^\n]*)|("""[\s\S]*?"""|'''[\s\S]*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')|(\b\d+(?:\.\d+)?\b)|(\b(?:and|as|assert|async|await|break|class|continue|def|elif|else|except|False|finally|for|from|if|import|in|is|lambda|None|not|or|pass|raise|return|True|try|while|with|yield)\b)/g;
const KINDS = ["comment", "string", "number", "keyword"];

export function highlight(source) {
  const parts = [];
  let at = 0;
  for (const match of source.matchAll(PYTHON)) {
    if (match.index > at) parts.push(source.slice(at, match.index));
    const kind = KINDS[match.slice(1).findIndex((group) => group !== undefined)];
    parts.push(h("span", { class: `py-${kind}` }, match[0]));
    at = match.index + match[0].length;
  }
  parts.push(source.slice(at));
  return h("pre", { class: "policy", id: "policy-source" }, h("code", {}, parts));
}

export function mount(view, context) {
  const model = h("input", { id: "route-model", name: "model", required: true, autocomplete: "off" });
  const prompt = h("textarea", { id: "route-prompt", name: "prompt", rows: 3 });
  const hive = h("input", { id: "route-hive", name: "hive", autocomplete: "off", placeholder: "any" });
  const result = h("div", { "aria-live": "polite" });
  const active = h("section", { id: "policy", "aria-label": "The routing policy in force" });
  async function explain(event) {
    event.preventDefault();
    const query = new URLSearchParams({ model: model.value, prompt: prompt.value, prompt_chars: String(prompt.value.length) });
    if (hive.value) query.set("hive", hive.value);
    try {
      const answer = await json(OPERATOR, `/v2/route?${query}`, { signal: context.signal });
      replace(
        result,
        h("p", {}, `Policy ${answer.policy}: `, answer.pick ? h("strong", { id: "pick" }, answer.pick) : "no worker", h("span", { class: "dim" }, ` · ${answer.reason}`)),
        table(
          "Candidates",
          ["Worker", "Hive", "Model", "Busy", "Address"],
          answer.candidates.map((candidate) =>
            h(
              "tr",
              { dataset: { worker: candidate.worker } },
              h("th", { scope: "row" }, candidate.worker),
              h("td", {}, candidate.hive),
              h("td", {}, candidate.model),
              h("td", { class: "num" }, `${candidate.in_flight}/${candidate.slots}`),
              h("td", { class: "source" }, candidate.url),
            ),
          ),
        ),
      );
    } catch (error) {
      if (error instanceof Unauthorized) context.refused(OPERATOR);
      else if (error.name !== "AbortError") replace(result, notice(error.message, "error"));
    }
  }
  replace(
    view,
    h("h1", {}, "Routing"),
    active,
    h("h2", {}, "Explain a choice"),
    h(
      "form",
      { class: "explain", onsubmit: explain },
      h("div", { class: "field" }, h("label", { for: "route-model" }, "Model"), model),
      h("div", { class: "field" }, h("label", { for: "route-prompt" }, "Sample prompt"), prompt),
      h("div", { class: "field" }, h("label", { for: "route-hive" }, "Pinned hive"), hive),
      h("div", { class: "actions" }, h("button", { type: "submit" }, "Explain")),
    ),
    result,
  );
  json(OPERATOR, "/v2/route/policy", { signal: context.signal })
    .then((policy) => {
      replace(
        active,
        h("p", {}, "Policy in force: ", h("strong", { id: "policy-name" }, policy.name ?? policy.kind), policy.disabled ? h("span", { class: "badge bad" }, ` disabled: ${policy.disabled}`) : null),
        policy.source ? highlight(policy.source) : h("p", { class: "dim" }, "A built-in policy: prefix (a request goes to the replica likely to hold its prompt's prefix, the least loaded when that one is full), least-loaded or round-robin."),
      );
    })
    .catch(() => {});
  json(OPERATOR, "/v2/spec", { signal: context.signal })
    .then((spec) => {
      const first = spec?.spec?.models?.[0]?.name ?? spec?.models?.[0]?.name;
      if (first && !model.value) model.value = first;
    })
    .catch(() => {});
}
