// Small DOM helpers shared by the modules.

/** The element with data-testid `id` inside `root`. */
export const byTestId = (root, id) => root.querySelector(`[data-testid="${id}"]`);

/** A new element with properties (or attributes) and children; text children are set as text, never HTML. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el) el[k] = v;
    else el.setAttribute(k, v);
  }
  el.append(...children.filter((c) => c !== null && c !== undefined));
  return el;
}

/** A file's bytes as base64 (no data-URL prefix): an image is sent exactly as chosen. */
export function fileToBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}
