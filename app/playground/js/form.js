// The generation form: the models, submodels and control units the deployment serves (from ListModels and
// ListControlNets, with their InferenceParams defaults), the background reference, prompts, size, seed and
// batch size; collected into GenerateFromMannequin's parameters. Also where each field's errors go.

import { byTestId as $, h } from "./dom.js";

const MAX_SUB_MODELS = 8; // app/contract/limits.py
const MAX_CONTROL_UNITS = 3;
const SUBMODEL_GROUPS = [
  ["LoraModels", "LoRA"],
  ["EmbeddingModels", "Embedding"],
  ["HypernetworkModels", "HyperNetwork"],
];

/** A range input with its value shown beside it; returns [label, input]. */
function slider(text, { min, max, step, value, testid }) {
  const input = h("input", { type: "range", min, max, step, value, dataset: { testid } });
  const out = h("output", {}, String(value));
  input.addEventListener("input", () => (out.textContent = input.value));
  return [h("label", { className: "slider" }, text, input, out), input];
}

/** "Name (ModelCode)". */
const modelLabel = (m) => (m.Name && m.Name !== m.ModelCode ? `${m.Name} (${m.ModelCode})` : m.ModelCode);

export class GenerationForm {
  constructor(root, errors) {
    this.root = root;
    this.errors = errors;
    this.models = { MainModels: [], LoraModels: [], EmbeddingModels: [], HypernetworkModels: [] };
    this.controls = { PreProcessors: [], ControlModels: [] };
    this.photoSize = null; // the mannequin's natural size, for the "photo's size" preset
    this.el = {};
    for (const id of ["main-model", "main-model-hint", "submodels", "submodel-add", "control-mode", "control-units",
      "control-add", "positive-prompts", "negative-prompts", "translate", "size-preset", "width", "height",
      "resize-mode", "seed", "seed-random", "batch-size", "refer-strength", "refer-strength-value"]) {
      this.el[id] = $(root, id);
    }
    this.bind();
    this.routeErrors();
  }

  bind() {
    const el = this.el;
    el["submodel-add"].addEventListener("click", () => this.addSubmodel());
    el["control-add"].addEventListener("click", () => this.addControlUnit());
    el["control-mode"].addEventListener("change", () => this.controlModeChanged());
    el["main-model"].addEventListener("change", () => this.showTriggerWords());
    el["size-preset"].addEventListener("change", () => this.applyPreset());
    for (const id of ["width", "height"]) el[id].addEventListener("input", () => (el["size-preset"].value = "custom"));
    el["seed-random"].addEventListener("click", () => (el.seed.value = "-1"));
    el["refer-strength"].addEventListener("input", () => {
      el["refer-strength-value"].textContent = el["refer-strength"].value;
    });
  }

  /** Field paths whose errors belong to a slot of another name. */
  routeErrors() {
    const e = this.errors;
    for (const [path, key] of [
      ["ImageAndMaskList", "mannequin"], ["ImageList", "mannequin"], ["Mannequin", "mannequin"],
      ["Mannequin.ImageIndex", "mannequin"], ["Mannequin.ResizeMode", "ResizeMode"],
      ["Mannequin.ClothesMaskIndex", "mask"], ["Mannequin.InvertMask", "mask"], ["MaskList", "mask"],
      ["Mannequin.ClothesSegmenter", "mask"], ["Mannequin.GarmentClasses", "mask"],
      ["Image2Image", "background"], ["Image2Image.ReferStrength", "ReferStrength"],
      ["ControlNet", "ControlNetList"],
      ["RawImage", "points"], ["IncludePointList", "points"], ["ExcludePointList", "points"], ["Engine", "points"],
      ["ErodeSize", "points"], ["OnlyMask", "points"],
    ]) e.route(path, key);
  }

  // --- the deployment's models ------------------------------------------------------------------------

  /** Fill the model controls from ListModels' and ListControlNets' answers. */
  setModels(listModels, listControlNets) {
    for (const k of Object.keys(this.models)) this.models[k] = listModels[k] || [];
    this.controls.PreProcessors = listControlNets.PreProcessors || [];
    // ControlNets only: an IP-Adapter ("Adapter" in ListControlNets) reads a reference image, which these rows
    // (a control map from the mannequin photo) have no place for
    this.controls.ControlModels = (listControlNets.ControlModels || []).filter((m) => !m.Adapter);

    const main = this.el["main-model"];
    const chosen = main.value;
    main.replaceChildren(h("option", { value: "" }, "The deployment's default"),
      ...this.models.MainModels.map((m) => h("option", { value: m.ModelCode }, modelLabel(m))));
    if ([...main.options].some((o) => o.value === chosen)) main.value = chosen;
    this.showTriggerWords();
    this.el["submodel-add"].hidden = !SUBMODEL_GROUPS.some(([list]) => this.models[list].length);
    this.el["submodels"].replaceChildren();
    this.el["control-units"].replaceChildren();
    this.el["control-mode"].querySelector('[value="custom"]').disabled = !this.controls.ControlModels.length;
    this.controlModeChanged();
  }

  showTriggerWords() {
    const m = this.models.MainModels.find((x) => x.ModelCode === this.el["main-model"].value);
    const words = m?.TriggerWordList || [];
    this.el["main-model-hint"].textContent = words.length ? `Trigger words: ${words.join(", ")}` : "";
  }

  /** Renumber the rows' error slots (SubModelList[i], ControlNetList[i]) after a row was removed. */
  renumber(list, field) {
    [...list.children].forEach((row, i) => {
      row.querySelector(".error").dataset.error = `${field}[${i}]`;
      row.dataset.index = String(i);
    });
  }

  addSubmodel() {
    const list = this.el.submodels;
    if (list.children.length >= MAX_SUB_MODELS) return;
    const select = h("select", { dataset: { testid: "submodel-select" } });
    for (const [listName, type] of SUBMODEL_GROUPS) {
      const models = this.models[listName];
      if (!models.length) continue;
      select.append(h("optgroup", { label: type },
        ...models.map((m) => h("option", { value: m.ModelCode, dataset: { list: listName } }, modelLabel(m)))));
    }
    const weightBox = h("span", { className: "weight" });
    const hint = h("p", { className: "hint" });
    const row = h("li", { className: "row-item" },
      h("label", {}, "Model ", select), weightBox,
      h("button", { type: "button", className: "link", dataset: { testid: "submodel-remove" } }, "Remove"),
      hint, h("p", { className: "error", role: "alert", hidden: true }));
    row.weight = null;
    // The weight slider (LoRA: LoraWeight; HyperNetwork: its strength), defaulting to the model's own value.
    const chosen = () => {
      const listName = select.selectedOptions[0]?.dataset.list;
      const model = (this.models[listName] || []).find((m) => m.ModelCode === select.value);
      const type = SUBMODEL_GROUPS.find(([l]) => l === listName)?.[1];
      row.model = model;
      weightBox.replaceChildren();
      row.weight = null;
      if (type === "LoRA" || type === "HyperNetwork") {
        const value = model?.InferenceParams?.LoraWeight ?? 1;
        const [label, input] = slider(type === "LoRA" ? "Weight" : "Strength",
          { min: -1, max: 2, step: 0.05, value, testid: "submodel-weight" });
        row.weight = input;
        weightBox.append(label);
      }
      const words = model?.TriggerWordList || [];
      hint.textContent = words.length ? `Trigger words: ${words.join(", ")}` : "";
    };
    select.addEventListener("change", chosen);
    row.querySelector("button").addEventListener("click", () => {
      row.remove();
      this.renumber(list, "SubModelList");
    });
    list.append(row);
    chosen();
    this.renumber(list, "SubModelList");
    select.focus();
  }

  controlModeChanged() {
    const custom = this.el["control-mode"].value === "custom";
    this.el["control-add"].hidden = !custom;
    this.el["control-units"].hidden = !custom;
    if (custom && !this.el["control-units"].children.length) this.addControlUnit();
  }

  addControlUnit() {
    const list = this.el["control-units"];
    if (list.children.length >= MAX_CONTROL_UNITS || !this.controls.ControlModels.length) return;
    const pre = h("select", { dataset: { testid: "control-preprocessor" } },
      h("option", { value: "" }, "None (the photo is the control map)"),
      ...this.controls.PreProcessors.map((m) => h("option", { value: m.ModelCode }, modelLabel(m))));
    const resolution = h("input", { type: "number", min: 64, max: 2048, step: 64, inputMode: "numeric",
      dataset: { testid: "control-resolution" } });
    const cm = h("select", { dataset: { testid: "control-model" } },
      ...this.controls.ControlModels.map((m) => h("option", { value: m.ModelCode }, modelLabel(m))));
    const [weightLabel, weight] = slider("Weight", { min: 0, max: 2, step: 0.05, value: 1, testid: "control-weight" });
    const [startLabel, start] = slider("Start", { min: 0, max: 1, step: 0.05, value: 0, testid: "control-start" });
    const [endLabel, end] = slider("End", { min: 0, max: 1, step: 0.05, value: 1, testid: "control-end" });
    const resolutionLabel = h("label", {}, "Resolution ", resolution);
    const row = h("li", { className: "row-item" },
      h("label", {}, "Pre-processor ", pre), resolutionLabel, h("label", {}, "Control model ", cm),
      weightLabel, startLabel, endLabel,
      h("button", { type: "button", className: "link", dataset: { testid: "control-remove" } }, "Remove"),
      h("p", { className: "hint" }, "Reads the mannequin photo."),
      h("p", { className: "error", role: "alert", hidden: true }));
    Object.assign(row, { pre, resolution, cm, weight, start, end });
    // Defaults: the chosen model's InferenceParams.
    const preChosen = () => {
      const p = this.controls.PreProcessors.find((m) => m.ModelCode === pre.value);
      resolutionLabel.hidden = !p;
      resolution.value = p?.InferenceParams?.Resolution ?? 512;
    };
    const cmChosen = () => {
      const ip = this.controls.ControlModels.find((m) => m.ModelCode === cm.value)?.InferenceParams || {};
      for (const [input, key, fallback] of [[weight, "ControlWeight", 1], [start, "StartingStep", 0],
        [end, "EndingStep", 1]]) {
        input.value = ip[key] ?? fallback;
        input.dispatchEvent(new Event("input"));
      }
    };
    pre.addEventListener("change", preChosen);
    cm.addEventListener("change", cmChosen);
    row.querySelector("button").addEventListener("click", () => {
      row.remove();
      this.renumber(list, "ControlNetList");
    });
    list.append(row);
    preChosen();
    cmChosen();
    this.renumber(list, "ControlNetList");
  }

  /** The slot of the control where `code` is chosen (for "Model [code] not exists"), or null. */
  slotForModel(code) {
    if (this.el["main-model"].value === code) return "MainModel";
    const subs = [...this.el.submodels.children];
    const i = subs.findIndex((row) => row.querySelector("select").value === code);
    if (i >= 0) return `SubModelList[${i}]`;
    const units = [...this.el["control-units"].children];
    const j = units.findIndex((row) => row.pre.value === code || row.cm.value === code);
    return j >= 0 ? `ControlNetList[${j}]` : null;
  }

  // --- size ------------------------------------------------------------------------------------------------

  /** The mannequin's size changed: the "photo's size" preset follows it (at most 2560 a side). */
  setPhotoSize(width, height) {
    const scale = Math.min(1, 2560 / Math.max(width, height));
    this.photoSize = [Math.max(64, Math.round(width * scale)), Math.max(64, Math.round(height * scale))];
    this.applyPreset();
  }

  applyPreset() {
    const v = this.el["size-preset"].value;
    let size = null;
    if (v === "photo") size = this.photoSize;
    else if (/^\d+x\d+$/.test(v)) size = v.split("x").map(Number);
    if (!size) return;
    [this.el.width.value, this.el.height.value] = size;
  }

  // --- collecting --------------------------------------------------------------------------------------

  /** A number input's value: a number, or the text as typed when it is not one (the server then says
   *  what is wrong with it), or undefined when empty (the server's default). */
  static number(input) {
    if (input.value.trim() === "") return undefined;
    const n = Number(input.value);
    return Number.isFinite(n) ? n : input.value;
  }

  static lines(textarea) {
    return textarea.value.split("\n").map((s) => s.trim()).filter(Boolean);
  }

  /** GenerateFromMannequin's parameters from the form (without the images and Mannequin). */
  collect() {
    const el = this.el;
    const params = {
      PositivePrompts: GenerationForm.lines(el["positive-prompts"]),
      NegativePrompts: GenerationForm.lines(el["negative-prompts"]),
      TranslatePrompts: el.translate.checked,
      Seed: GenerationForm.number(el.seed),
      Width: GenerationForm.number(el.width),
      Height: GenerationForm.number(el.height),
      BatchSize: GenerationForm.number(el["batch-size"]),
    };
    if (el["main-model"].value) params.MainModel = { ModelCode: el["main-model"].value };
    const subs = [...el.submodels.children].map((row) => {
      const entry = { ModelCode: row.querySelector("select").value };
      if (row.weight) entry.InferenceParams = { LoraWeight: Number(row.weight.value) };
      return entry;
    });
    if (subs.length) params.SubModelList = subs;
    const mode = el["control-mode"].value;
    if (mode === "none") params.ControlNetList = [];
    if (mode === "custom") {
      params.ControlNetList = [...el["control-units"].children].map((row) => {
        const unit = {
          ControlModel: {
            ModelCode: row.cm.value,
            InferenceParams: {
              ControlWeight: Number(row.weight.value),
              StartingStep: Number(row.start.value),
              EndingStep: Number(row.end.value),
            },
          },
        };
        if (row.pre.value) {
          unit.PreProcessor = { ModelCode: row.pre.value, InferenceParams: {} };
          const r = GenerationForm.number(row.resolution);
          if (r !== undefined) unit.PreProcessor.InferenceParams.Resolution = r;
        }
        return unit;
      });
    }
    for (const k of Object.keys(params)) if (params[k] === undefined) delete params[k];
    return params;
  }

  get resizeMode() {
    return this.el["resize-mode"].value;
  }

  get referStrength() {
    return Number(this.el["refer-strength"].value);
  }

  setSeed(seed) {
    this.el.seed.value = String(seed);
    this.el.seed.focus();
  }
}
