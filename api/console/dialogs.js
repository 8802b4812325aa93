// Modal forms on the one <dialog> element: `ask({title, fields, submit})` resolves with the
// values, or null when cancelled.
import { h } from "./view.js";

/**
 * fields: [{name, label, type: "text"|"textarea"|"select"|"checkbox"|"datetime-local"|"info",
 *           value?, options?, required?, placeholder?, content?}]
 */
export function ask({ title, fields, submit = "OK" }) {
  const dialog = document.getElementById("dialog");
  const form = document.getElementById("dialog-form");
  form.replaceChildren(
    h("h3", {}, title),
    ...fields.map(field),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "button", value: "cancel", onclick: () => dialog.close("cancel") }, "Cancel"),
      submit ? h("button", { type: "submit", class: "primary" }, submit) : null,
    ),
  );
  return new Promise((resolve) => {
    form.onsubmit = (e) => {
      e.preventDefault();
      const values = {};
      for (const f of fields) {
        const input = form.elements.namedItem(f.name);
        if (!input) continue;
        values[f.name] = f.type === "checkbox" ? input.checked : input.value.trim();
      }
      dialog.close("ok");
      resolve(values);
    };
    dialog.onclose = () => dialog.returnValue !== "ok" && resolve(null);
    dialog.returnValue = "";
    dialog.showModal();
    form.querySelector("input, textarea, select")?.focus();
  });
}

function field(f) {
  if (f.type === "info") return h("div", {}, f.content);
  const attrs = { name: f.name, required: f.required, placeholder: f.placeholder };
  let input;
  if (f.type === "textarea") {
    input = h("textarea", { ...attrs, rows: f.rows || 3 });
    input.value = f.value ?? "";
  } else if (f.type === "select") {
    input = h("select", attrs, f.options.map(([value, label]) => h("option", { value }, label)));
    if (f.value) input.value = f.value;
  } else if (f.type === "checkbox") {
    input = h("input", { ...attrs, type: "checkbox" });
    input.checked = !!f.value;
    return h("label", { class: "check" }, input, f.label);
  } else {
    input = h("input", { ...attrs, type: f.type || "text" });
    input.value = f.value ?? "";
  }
  return h("label", {}, f.label, input);
}
