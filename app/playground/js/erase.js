// Erase by painting (RemoveContents): what is painted in the photo's mask editor is erased from the photo, by one of
// the deployment's Erasers (ListModels' Erasers) or redrawn by the chosen main model (inpainting); nothing farther
// than MaskBlur from the painted area changes. The result joins the gallery, compared with the photo.

import { byTestId as $, h } from "./dom.js";

const MAIN = "main"; // the select's value for "redraw with the main model"
const label = (m) => (m.Name && m.Name !== m.ModelCode ? `${m.Name} (${m.ModelCode})` : m.ModelCode);

export class EraseTool {
  /**
   * @param {object} deps api, errors, editor (the MaskEditor), tasks, gallery; photo() the current photo
   *   ({b64, url, width, height} or null); mainModel() the form's Main model code
   */
  constructor(root, deps) {
    Object.assign(this, deps);
    this.el = {};
    for (const id of ["eraser", "erase-blur", "erase-blur-value", "erase", "erase-status"]) this.el[id] = $(root, id);
    for (const field of ["RawImage", "Mask", "InvertMask", "MaskBlur", "Eraser"]) this.errors.route(field, "erase");
    this.el["erase-blur"].addEventListener("input", () => {
      this.el["erase-blur-value"].textContent = this.el["erase-blur"].value;
    });
    this.el.erase.addEventListener("click", () => this.erase());
  }

  /** The Erasers of ListModels' answer, then the inpainting fallback. */
  setModels(listModels) {
    const erasers = listModels.Erasers || [];
    this.el.eraser.replaceChildren(...erasers.map((m) => h("option", { value: m.ModelCode }, label(m))),
      h("option", { value: MAIN }, "Redraw with the main model (inpainting)"));
  }

  async erase() {
    const el = this.el;
    this.errors.clear("erase");
    const photo = this.photo();
    if (!photo) return this.errors.show("erase", "Choose a photo first (step 1).");
    if (!this.editor.garmentPixels()) {
      return this.errors.show("erase", "Paint over what to erase first (step 2, Paint it).");
    }
    const params = { RawImage: photo.b64, Mask: this.editor.exportPng(), MaskBlur: Number(el["erase-blur"].value) };
    if (el.eraser.value === MAIN) params.MainModel = { ModelCode: this.mainModel() };
    else if (el.eraser.value) params.Eraser = el.eraser.value;
    el.erase.disabled = true;
    el["erase-status"].textContent = "Erasing…";
    try {
      const TaskUID = await this.api.submit("RemoveContents", params);
      this.tasks.add(TaskUID, "RemoveContents", "Erase the painted area");
      const detail = await this.tasks.waitFor(TaskUID);
      if (detail.Status !== "Finished") {
        throw new Error(detail.Status === "Error"
          ? `${detail.ErrorMessage} (ErrorCode ${detail.ErrorCode})` : `the task was ${detail.Status}`);
      }
      const notes = (detail.Notes || []).filter((n) => !n.startsWith("ignored fields"));
      this.gallery.addTask(detail, { url: photo.url, resizeMode: "JustResize" }, notes.join("; ") || null);
      el["erase-status"].textContent = "Erased: the result is with the results.";
    } catch (err) {
      el["erase-status"].textContent = "";
      this.errors.showError(err, "erase");
    } finally {
      el.erase.disabled = false;
    }
  }
}
