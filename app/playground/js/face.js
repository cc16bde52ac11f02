// The face reference: an IP-Adapter unit (ListControlNets' ControlModels with "Adapter") reading an uploaded image
// or one of the key's personas (PersonaCode), and the persona manager: CreatePersona from uploaded images,
// ListPersonas, DeletePersona. Shown only when the deployment serves an IP-Adapter.

import { byTestId as $, fileToBase64, h } from "./dom.js";

const modelLabel = (m) => (m.Name && m.Name !== m.ModelCode ? `${m.Name} (${m.ModelCode})` : m.ModelCode);


export class FaceReference {
  constructor(root, api, errors) {
    this.api = api;
    this.errors = errors;
    this.image = null; // {b64, url}: the uploaded face
    this.personas = [];
    this.el = {};
    for (const id of ["face-section", "face-source", "face-input", "face-preview", "face-persona", "face-model",
      "face-weight", "face-weight-value", "persona-list", "persona-empty", "persona-name", "persona-files",
      "persona-create", "persona-status"]) {
      this.el[id] = $(root, id);
    }
    this.parts = [...root.querySelectorAll("[data-face]")];
    for (const field of ["Name", "ImageList", "PersonaCode"]) errors.route(field, "personas"); // the persona actions'
    this.bind();
  }

  bind() {
    const el = this.el;
    el["face-source"].addEventListener("change", () => this.sourceChanged());
    el["face-weight"].addEventListener("input", () => (el["face-weight-value"].textContent = el["face-weight"].value));
    el["face-model"].addEventListener("change", () => this.modelChanged());
    el["face-input"].addEventListener("change", () => this.faceChosen());
    el["persona-create"].addEventListener("click", () => this.createPersona());
  }

  /** The IP-Adapters of ListControlNets' answer; the section shows only when there is one. */
  setModels(listControlNets) {
    this.adapters = (listControlNets.ControlModels || []).filter((m) => m.Adapter === "ip-adapter");
    const select = this.el["face-model"];
    select.replaceChildren(...this.adapters.map((m) => h("option", { value: m.ModelCode }, modelLabel(m))));
    this.el["face-section"].hidden = !this.adapters.length;
    this.modelChanged();
    if (this.adapters.length) this.refreshPersonas();
  }

  modelChanged() {
    const m = (this.adapters || []).find((x) => x.ModelCode === this.el["face-model"].value);
    this.el["face-weight"].value = m?.InferenceParams?.ControlWeight ?? 1;
    this.el["face-weight"].dispatchEvent(new Event("input"));
  }

  sourceChanged() {
    const source = this.el["face-source"].value;
    for (const part of this.parts) {
      part.hidden = !(part.dataset.face === source || (part.dataset.face === "adapter" && source !== "none"));
    }
    this.errors.clear("face");
  }

  async faceChosen() {
    const file = this.el["face-input"].files[0];
    this.errors.clear("face");
    this.image = null;
    this.el["face-preview"].hidden = true;
    if (!file) return;
    const img = new Image();
    img.src = URL.createObjectURL(file);
    try {
      await img.decode();
    } catch {
      this.errors.show("face", `${file.name} is not an image this browser can read (PNG, JPEG, WEBP or BMP)`);
      return;
    }
    this.image = { b64: await fileToBase64(file), url: img.src };
    this.el["face-preview"].src = img.src;
    this.el["face-preview"].hidden = false;
  }

  // --- the unit ------------------------------------------------------------------------------------------

  /** The IP-Adapter unit the section asks for (its image appended to `images`), or null; throws an Error (shown
   *  at the section) when the chosen source is not ready. */
  unit(images) {
    const source = this.el["face-source"].value;
    if (source === "none" || this.el["face-section"].hidden) return null;
    const unit = { ControlModel: { ModelCode: this.el["face-model"].value,
      InferenceParams: { ControlWeight: Number(this.el["face-weight"].value) } } };
    if (source === "upload") {
      if (!this.image) throw new Error("Choose a face image (or set Reference to None).");
      images.push(this.image.b64);
      unit.ImageIndex = images.length - 1;
    } else {
      if (!this.el["face-persona"].value) {
        throw new Error("Create a persona first (My personas), or choose another reference.");
      }
      unit.PersonaCode = this.el["face-persona"].value;
    }
    return unit;
  }

  // --- the persona manager ----------------------------------------------------------------------------------

  async refreshPersonas() {
    try {
      this.personas = (await this.api.call("ListPersonas")).PersonaList || [];
    } catch (err) {
      this.errors.showError(err, "personas");
      return;
    }
    this.render();
  }

  render() {
    const list = this.el["persona-list"];
    list.replaceChildren(...this.personas.map((p) => {
      const remove = h("button", { type: "button", className: "link", dataset: { testid: "persona-delete" } },
        "Delete");
      remove.addEventListener("click", () => this.deletePersona(p.PersonaCode, p.Name));
      const when = new Date(p.CreatedAt * 1000).toLocaleString();
      return h("li", { className: "row-item", dataset: { testid: "persona-item", code: p.PersonaCode } },
        h("span", {}, h("strong", {}, p.Name), ` · ${p.ImageCount} image(s) · ${when} · `,
          h("code", {}, p.PersonaCode)), remove);
    }));
    this.el["persona-empty"].hidden = this.personas.length > 0;
    const select = this.el["face-persona"];
    const chosen = select.value;
    select.replaceChildren(...this.personas.map((p) => h("option", { value: p.PersonaCode }, p.Name)));
    if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
  }

  async createPersona() {
    const el = this.el;
    this.errors.clear("personas");
    const files = [...el["persona-files"].files];
    if (!files.length) return this.errors.show("personas", "Choose one or more images of the person.");
    el["persona-create"].disabled = true;
    el["persona-status"].textContent = "Creating…";
    try {
      const ImageList = await Promise.all(files.map(fileToBase64));
      const { PersonaCode } = await this.api.call("CreatePersona", { Name: el["persona-name"].value, ImageList });
      el["persona-status"].textContent = `Created ${PersonaCode}.`;
      el["persona-name"].value = "";
      el["persona-files"].value = "";
      await this.refreshPersonas();
      el["face-persona"].value = PersonaCode;
    } catch (err) {
      el["persona-status"].textContent = "";
      this.errors.showError(err, "personas");
    } finally {
      el["persona-create"].disabled = false;
    }
  }

  async deletePersona(code, name) {
    this.errors.clear("personas");
    try {
      await this.api.call("DeletePersona", { PersonaCode: code });
      this.el["persona-status"].textContent = `Deleted ${name}.`;
    } catch (err) {
      this.errors.showError(err, "personas");
    }
    await this.refreshPersonas();
  }
}
