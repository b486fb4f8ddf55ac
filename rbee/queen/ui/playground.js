// Playground: chat with a served model through rbee's task API (POST /v2/tasks, then its event stream), so
// Cancel ends the generation on the worker (DELETE /v2/tasks/{id}) rather than only closing this tab's stream.
// Shows time to first token, tokens/s and the hive and worker that answered.

import { CLIENT, Refused, Unauthorized, call, follow, json } from "./api.js";
import { h, notice, replace } from "./dom.js";

export const role = CLIENT;
export const title = "Playground";

function field(label, input) {
  return h("div", { class: "field" }, h("label", { for: input.id }, label), input);
}

function number(id, value, attributes) {
  return h("input", { id, name: id, type: "number", inputmode: "decimal", value, ...attributes });
}

export function mount(view, context) {
  const model = h("select", { id: "model", name: "model", required: true });
  const system = h("textarea", { id: "system", name: "system", rows: 2, placeholder: "You are a helpful assistant." });
  const prompt = h("textarea", { id: "prompt", name: "prompt", rows: 3, required: true });
  const temperature = number("temperature", "0.7", { min: 0, max: 2, step: 0.1 });
  const maxTokens = number("max-tokens", "128", { min: 1, max: 32768, step: 1 });
  const seed = number("seed", "", { min: 0, step: 1, placeholder: "random" });
  const stop = h("input", { id: "stop", name: "stop", type: "text", placeholder: "comma-separated" });
  const send = h("button", { type: "submit", id: "send" }, "Send");
  const cancel = h("button", { type: "button", id: "cancel", disabled: true }, "Cancel");
  const answer = h("output", { id: "answer", for: "prompt", "aria-live": "polite" });
  const stats = h("p", { id: "stats", class: "dim" });
  const problem = h("div", {});
  let running = null;

  async function run(event) {
    event.preventDefault();
    replace(problem);
    replace(answer);
    replace(stats, "Waiting for a worker…");
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value });
    messages.push({ role: "user", content: prompt.value });
    const body = { model: model.value, messages, max_tokens: Number(maxTokens.value), temperature: Number(temperature.value) };
    if (seed.value !== "") body.seed = Number(seed.value);
    const stops = stop.value.split(",").map((text) => text.trim()).filter(Boolean);
    if (stops.length) body.stop = stops;
    const controller = new AbortController();
    context.signal.addEventListener("abort", () => controller.abort(), { once: true });
    send.disabled = true;
    cancel.disabled = false;
    const started = performance.now();
    let first = null;
    let tokens = 0;
    let route = null;
    let ending = "";
    try {
      const task = await json(CLIENT, "/v2/tasks", { method: "POST", body, signal: controller.signal });
      running = { task: task.task_id, controller };
      const show = () => {
        const elapsed = (performance.now() - (first ?? started)) / 1000;
        const rate = first && tokens > 1 && elapsed > 0 ? `${((tokens - 1) / elapsed).toFixed(1)} tokens/s` : "";
        replace(
          stats,
          [
            first ? `TTFT ${Math.round(first - started)} ms` : "",
            `${tokens} tokens`,
            rate,
            route ? `answered by ${route.worker} on hive ${route.hive}` : "",
            ending,
          ].filter(Boolean).join(" · "),
        );
      };
      await follow(CLIENT, task.events, {
        signal: controller.signal,
        onComment: (comment) => {
          if (comment.startsWith("rbee-route ")) route = JSON.parse(comment.slice("rbee-route ".length));
        },
        onEvent: (data) => {
          if (data.token !== undefined) {
            first ??= performance.now();
            tokens += 1;
            answer.append(data.token);
          } else if (data.done) {
            ending = `finished: ${data.finish_reason}`;
          } else if (data.error) {
            replace(problem, notice(data.error.message ?? String(data.error), "error"));
          }
          show();
        },
      });
      show();
    } catch (error) {
      if (error instanceof Unauthorized) context.refused(CLIENT);
      else if (error.name !== "AbortError") replace(problem, notice(error instanceof Refused ? error.message : String(error), "error"));
    } finally {
      running = null;
      send.disabled = false;
      cancel.disabled = true;
    }
  }

  async function stopTask() {
    if (!running) return;
    const { task, controller } = running;
    cancel.disabled = true;
    try {
      await call(CLIENT, `/v2/tasks/${encodeURIComponent(task)}`, { method: "DELETE" });
    } catch {
      // the task may have just finished: closing the stream below is enough
    }
    setTimeout(() => controller.abort(), 2000); // the cancelled task's last event normally ends the stream first
  }

  const form = h(
    "form",
    { class: "playground", onsubmit: run },
    field("Model", model),
    field("System prompt", system),
    field("Message", prompt),
    h("div", { class: "knobs" }, field("Temperature", temperature), field("Max tokens", maxTokens), field("Seed", seed), field("Stop", stop)),
    h("div", { class: "actions" }, send, cancel),
  );
  cancel.addEventListener("click", stopTask);
  replace(view, h("h1", {}, "Playground"), form, problem, h("h2", {}, "Answer"), answer, stats);
  json(CLIENT, "/v1/models", { signal: context.signal })
    .then((list) => {
      replace(model, list.data.map((entry) => h("option", { value: entry.id }, entry.id)));
      if (!list.data.length) replace(problem, notice("No model is served yet.", "error"));
    })
    .catch((error) => {
      if (error instanceof Unauthorized) context.refused(CLIENT);
      else if (error.name !== "AbortError") replace(problem, notice(error.message, "error"));
    });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
  });
}
