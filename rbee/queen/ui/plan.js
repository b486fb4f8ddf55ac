// Plan: a hive.yaml pasted or uploaded, planned by the queen exactly as `rbee plan` plans it (POST /v2/plan);
// problems point at their line. Applying needs a confirmation, then follows the queen's reconcile loop live
// (the conditions of every target) until the fleet has converged.

import { OPERATOR, Refused, Unauthorized, json, live } from "./api.js";
import { h, notice, replace } from "./dom.js";

export const role = OPERATOR;
export const title = "Plan";

const SYMBOLS = { "+": "add", "~": "change", "-": "destroy", "!": "blocked", "=": "same" };
const WHERE = /^[^:]*:(\d+):(\d+):/;

function selectLine(textarea, number) {
  const lines = textarea.value.split("\n");
  const start = lines.slice(0, number - 1).reduce((sum, line) => sum + line.length + 1, 0);
  textarea.focus();
  textarea.setSelectionRange(start, start + (lines[number - 1] ?? "").length);
}

function problemItem(problem, textarea) {
  const where = WHERE.exec(problem);
  if (!where) return h("li", {}, problem);
  const number = Number(where[1]);
  const source = textarea.value.split("\n")[number - 1] ?? "";
  return h(
    "li",
    { dataset: { line: String(number) } },
    h("button", { type: "button", class: "quiet", onclick: () => selectLine(textarea, number) }, `line ${number}`),
    " ",
    problem,
    h("pre", { class: "excerpt" }, `${String(number).padStart(4)} | ${source}\n     | ${" ".repeat(Math.max(0, Number(where[2]) - 1))}^`),
  );
}

export function mount(view, context) {
  const textarea = h("textarea", { id: "spec", name: "spec", rows: 18, spellcheck: "false", wrap: "off", class: "code" });
  const upload = h("input", { id: "upload", type: "file", accept: ".yaml,.yml,text/yaml" });
  const planButton = h("button", { type: "submit", id: "plan" }, "Plan");
  const result = h("div", { id: "plan-result", "aria-live": "polite" });
  let filename = "hive.yaml";

  upload.addEventListener("change", async () => {
    const [file] = upload.files;
    if (!file) return;
    filename = file.name;
    textarea.value = await file.text();
  });

  function failed(error) {
    if (error instanceof Unauthorized) context.refused(OPERATOR);
    else if (error.name !== "AbortError") replace(result, notice(error.message, "error"));
  }

  function follow(generation, progress) {
    live(OPERATOR, "/v2/status?follow=1", context, {
      onEvent: (snapshot) => {
        const last = snapshot.reconcile.last;
        const done = last && last.generation >= generation;
        const waiting = snapshot.conditions.filter((condition) => condition.type !== "Ready");
        replace(
          progress,
          h(
            "p",
            { id: "apply-state", dataset: { converged: String(Boolean(done && !waiting.length)) } },
            done
              ? `Reconcile pass ${last.number} for generation ${last.generation}: ${last.acted} changes, ${last.failed} failed.`
              : `Generation ${generation} applied; waiting for the reconcile pass…`,
            done && !waiting.length ? " The fleet matches this hive.yaml." : "",
          ),
          h(
            "ul",
            { class: "conditions" },
            snapshot.conditions.map((condition) =>
              h("li", {}, h("span", { class: "target" }, condition.target), " ", h("span", { class: `badge ${condition.type === "Ready" ? "good" : "bad"}` }, `${condition.type}: ${condition.reason}`), " ", h("span", { class: "dim" }, condition.message)),
            ),
          ),
        );
      },
    });
  }

  function confirmation(answer) {
    const { add, change, destroy } = answer.summary;
    const progress = h("div", { id: "apply-progress", "aria-live": "polite" });
    const panel = h(
      "div",
      { class: "confirm", role: "group", "aria-labelledby": "confirm-title" },
      h("p", { id: "confirm-title" }, h("strong", {}, `Apply ${add + change + destroy} changes to the fleet now?`)),
      h("p", { class: "dim" }, "The queen's reconcile loop makes them, as rbee apply does. The hive.yaml on the operator's machine is not changed: save this text there too, or the next rbee apply of that file undoes it."),
      h(
        "div",
        { class: "actions" },
        h(
          "button",
          {
            type: "button",
            id: "apply-now",
            onclick: async (event) => {
              event.target.disabled = true;
              try {
                const applied = await json(OPERATOR, "/v2/spec", { method: "PUT", body: { spec: answer.spec, source: `web UI: ${filename}`, policy: null }, signal: context.signal });
                follow(applied.generation, progress);
              } catch (error) {
                event.target.disabled = false;
                failed(error);
              }
            },
          },
          "Apply now",
        ),
        h("button", { type: "button", class: "quiet", onclick: () => panel.remove() }, "Back"),
      ),
      progress,
    );
    return panel;
  }

  async function plan(event) {
    event.preventDefault();
    planButton.disabled = true;
    replace(result, h("p", { class: "dim" }, "Observing the hives…"));
    try {
      const answer = await json(OPERATOR, "/v2/plan", { method: "POST", body: { yaml: textarea.value, filename }, signal: context.signal });
      const listing = h(
        "pre",
        { class: "plan", id: "plan-text" },
        answer.lines.map((line) => [h("span", { class: line.symbol ? `symbol ${SYMBOLS[line.symbol]}` : line.text.startsWith("Plan:") || line.text.startsWith("No changes") ? "summary" : "head" }, line.text), "\n"]),
      );
      const apply = answer.summary.has_changes
        ? answer.not_applicable
          ? notice(answer.not_applicable)
          : h("button", { type: "button", id: "apply", onclick: (click) => { click.target.replaceWith(confirmation(answer)); } }, "Apply…")
        : null;
      replace(result, h("p", { class: "dim" }, `Observed in ${answer.observed_in.toFixed(2)} s.`), listing, apply);
    } catch (error) {
      if (error instanceof Refused && error.body?.error?.problems) {
        replace(result, h("div", { class: "notice error", role: "alert" }, h("p", {}, "hive.yaml has problems:"), h("ul", { class: "problems" }, error.body.error.problems.map((problem) => problemItem(problem, textarea)))));
      } else failed(error);
    } finally {
      planButton.disabled = false;
    }
  }

  replace(
    view,
    h("h1", {}, "Plan"),
    h(
      "form",
      { class: "plan-form", onsubmit: plan },
      h("div", { class: "field" }, h("label", { for: "spec" }, "hive.yaml"), textarea),
      h("div", { class: "field" }, h("label", { for: "upload" }, "Or upload a file"), upload),
      h("div", { class: "actions" }, planButton),
    ),
    result,
  );
  json(OPERATOR, "/v2/plan", { signal: context.signal })
    .then((current) => {
      if (!textarea.value) textarea.value = current.yaml;
    })
    .catch(failed);
}
