// Errors in words, next to the control that caused them. Each control has an error slot
// (<p class="error" data-error="KEY">); an API error's Message names a field path ("Params [Width] ..."),
// which is routed to the slot of that field, else of the nearest enclosing field, else the general one.
// Server text is always set as textContent, never as HTML.

/** What a RetCode means for the user, added after the server's Message. */
const HINTS = {
  150: "the service is unavailable; try again in a moment",
  153: "too many of your tasks are queued or running; wait for some to end",
  170: "enter your PublicKey and PrivateKey",
  171: "the PrivateKey does not match this PublicKey",
  172: "this PublicKey is not known to the server",
};

/** "SubModelList[1].InferenceParams.LoraWeight" -> itself, "SubModelList[1].InferenceParams",
 *  "SubModelList[1]", "SubModelList". */
function* enclosing(path) {
  let p = path;
  while (p) {
    yield p;
    const shorter = p.replace(/(\.[^.[\]]+|\[\d+\])$/, "");
    if (shorter === p) return;
    p = shorter;
  }
}

export class ErrorSlots {
  constructor(root = document) {
    this.root = root;
    this.routes = new Map(); // field path -> slot key, where they differ
  }

  /** Send errors of `path` (and of the fields inside it) to the slot `key`. */
  route(path, key) {
    this.routes.set(path, key);
  }

  slot(key) {
    return this.root.querySelector(`[data-error="${CSS.escape(key)}"]`);
  }

  /** The slot key for a field path. */
  resolve(path) {
    for (const p of enclosing(path)) {
      if (this.routes.has(p)) return this.routes.get(p);
      if (this.slot(p)) return p;
    }
    return "general";
  }

  show(key, text) {
    const el = this.slot(key) || this.slot("general");
    el.textContent = text;
    el.hidden = false;
    el.scrollIntoView({ block: "nearest" });
  }

  clear(key) {
    const slots = key ? [this.slot(key)] : this.root.querySelectorAll("[data-error]");
    for (const el of slots) {
      if (!el) continue;
      el.textContent = "";
      el.hidden = true;
    }
  }

  /** Show an error (an ApiError, or any Error) at the slot of the field it names, else at `fallback`.
   *  `modelSlot(code)` finds the slot of the control where a ModelCode was chosen (for RetCode 240). */
  showError(err, fallback = "general", modelSlot = () => null) {
    let key = fallback;
    if (err.field) key = this.resolve(err.field);
    else if (err.model && modelSlot(err.model)) key = modelSlot(err.model);
    else if ([170, 171, 172].includes(err.retCode)) key = "keys";
    const hint = HINTS[err.retCode];
    const code = err.retCode > 0 ? ` (RetCode ${err.retCode}${hint ? `: ${hint}` : ""})` : "";
    this.show(key, `${err.message}${code}`);
    return key;
  }
}
