// The playground's wiring: keys, the mannequin photo and its mask, the form, Generate / Cancel with progress,
// the gallery and the task list. Every server call goes through api.js; every error is shown by errors.js.

import { createClient, localUrl } from "./api.js";
import { byTestId, fileToBase64 } from "./dom.js";
import { EraseTool } from "./erase.js";
import { ErrorSlots } from "./errors.js";
import { FaceReference } from "./face.js";
import { GenerationForm } from "./form.js";
import { Gallery } from "./gallery.js";
import { forgetKeys, loadKeys, saveKeys } from "./keys.js";
import { MaskEditor } from "./mask-editor.js";
import { TaskList } from "./tasks.js";

const $ = (id) => byTestId(document, id);

let keys = loadKeys();
const api = createClient(() => keys);
const errors = new ErrorSlots();
const form = new GenerationForm(document, errors);
const face = new FaceReference(document, api, errors);
const editor = new MaskEditor(
  { stage: $("stage"), photo: $("mannequin-preview"), canvas: $("mask-canvas"), pointsLayer: $("points-layer"),
    cursor: document.querySelector(".brush-cursor") },
  { onChange: maskChanged, onPoints: pointsChanged },
);
const gallery = new Gallery($("gallery"), $("gallery-empty"),
  { onReuseSeed: (seed) => form.setSeed(seed), onFollowUp: followUp });
const tasks = new TaskList($("tasks"), $("tasks-empty"), api, () => keys?.publicKey, {
  onShow: (detail) => gallery.addTask(detail),
});

let mannequin = null; // {b64, url, width, height}
let photoVersion = 0; // a new photo (chosen, or cut out) makes a running cut-out's result stale
const eraseTool = new EraseTool(document, { api, errors, editor, tasks, gallery, photo: () => mannequin,
  mainModel: () => $("main-model").value });
let background = null; // {b64, url}
let currentTask = null; // the TaskUID Generate last created

// --- keys ------------------------------------------------------------------------------------------------

function showKeys(editing) {
  $("keys-status").hidden = editing || !keys;
  $("keys-form").hidden = !editing && !!keys;
  if (keys) $("keys-public").textContent = keys.publicKey;
}

$("keys-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const publicKey = $("public-key").value.trim();
  const privateKey = $("private-key").value.trim();
  errors.clear("keys");
  if (!publicKey || !privateKey) {
    errors.show("keys", "Enter both the PublicKey and the PrivateKey.");
    return;
  }
  const previous = keys;
  keys = { publicKey, privateKey };
  if (await connect()) {
    saveKeys(publicKey, privateKey);
    $("private-key").value = "";
    showKeys(false);
  } else {
    keys = previous; // refused: neither kept nor used
  }
});
$("keys-change").addEventListener("click", () => {
  $("public-key").value = keys?.publicKey || "";
  showKeys(true);
  $("private-key").focus();
});
$("keys-forget").addEventListener("click", () => {
  forgetKeys();
  keys = null;
  $("public-key").value = $("private-key").value = "";
  showKeys(true);
  tasks.render();
});

/** Read what the deployment serves (ListModels, ListControlNets) with the current keys; false when the
 *  keys are refused. */
async function connect() {
  try {
    const [models, controls] = await Promise.all([api.call("ListModels"), api.call("ListControlNets")]);
    form.setModels(models, controls);
    face.setModels(controls);
    setMaskEngines(models.MaskEngines || []);
    setUpscalers(models.Upscalers || []);
    eraseTool.setModels(models);
    tasks.refresh();
    return true;
  } catch (err) {
    errors.showError(err, "keys");
    return ![170, 171, 172].includes(err.retCode);
  }
}

// --- the mannequin photo -----------------------------------------------------------------------------------


/** An <img> of a file, decoded; throws when the browser cannot read it. */
async function decodeImage(file) {
  const img = new Image();
  img.src = URL.createObjectURL(file);
  try {
    await img.decode();
  } catch {
    throw new Error(`${file.name} is not an image this browser can read (PNG, JPEG, WEBP or BMP)`);
  }
  return img;
}

async function loadMannequin(file) {
  errors.clear("mannequin");
  let photo;
  try {
    const img = await decodeImage(file);
    photo = { b64: await fileToBase64(file), url: img.src, width: img.naturalWidth, height: img.naturalHeight };
  } catch (err) {
    errors.show("mannequin", err.message);
    return;
  }
  usePhoto(photo, `${file.name}, ${photo.width} × ${photo.height}`);
}

/** Make `photo` ({b64, url, width, height}) the one every flow sends, shown on the stage. */
function usePhoto(photo, name) {
  photoVersion++;
  mannequin = photo;
  errors.clear("cut-out");
  $("cut-out-status").textContent = "";
  $("cut-out").disabled = false;
  $("mannequin-name").textContent = name;
  dropzone.classList.add("has-photo");
  editor.setPhoto(mannequin.url, mannequin.width, mannequin.height);
  form.setPhotoSize(mannequin.width, mannequin.height);
}

const dropzone = $("dropzone");
$("mannequin-input").addEventListener("change", (e) => e.target.files[0] && loadMannequin(e.target.files[0]));
dropzone.addEventListener("dragover", (e) => {
  e.preventDefault();
  dropzone.classList.add("is-over");
});
dropzone.addEventListener("dragleave", () => dropzone.classList.remove("is-over"));
dropzone.addEventListener("drop", (e) => {
  e.preventDefault();
  dropzone.classList.remove("is-over");
  if (e.dataTransfer.files[0]) loadMannequin(e.dataTransfer.files[0]);
});
// a file dropped beside the drop zone must not replace the page
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());

// --- the clothes mask --------------------------------------------------------------------------------------

const maskMode = () => document.querySelector('input[name="mask-mode"]:checked').value;

function maskModeChanged() {
  const mode = maskMode();
  editor.setMode(mode);
  for (const tools of document.querySelectorAll("[data-for-mode]")) {
    tools.hidden = !tools.dataset.forMode.split(" ").includes(mode);
  }
  errors.clear("mask");
}
for (const radio of document.querySelectorAll('input[name="mask-mode"]')) {
  radio.addEventListener("change", maskModeChanged);
}
for (const radio of document.querySelectorAll('input[name="tool"]')) {
  radio.addEventListener("change", () => (editor.tool = radio.value));
}
for (const radio of document.querySelectorAll('input[name="point-kind"]')) {
  radio.addEventListener("change", () => (editor.pointKind = radio.value));
}
$("brush-size").addEventListener("input", (e) => {
  editor.brushSize = Number(e.target.value);
  $("brush-size-value").textContent = e.target.value;
});
$("mask-undo").addEventListener("click", () => editor.undo());
$("mask-invert").addEventListener("click", () => editor.invert());
$("mask-clear").addEventListener("click", () => editor.clear());
$("mask-visible").addEventListener("change", (e) => editor.setVisible(e.target.checked));
document.addEventListener("keydown", (e) => {
  const typing = e.target.matches("input[type=text], input:not([type]), input[type=number], input[type=password], textarea");
  if ((e.ctrlKey || e.metaKey) && e.key === "z" && !typing) {
    e.preventDefault();
    editor.undo();
  }
});

function maskChanged() {
  $("mask-undo").disabled = !editor.canUndo;
  errors.clear("mask");
}

$("mask-input").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  errors.clear("mask");
  if (!editor.hasPhoto) {
    errors.show("mask", "Choose the mannequin photo first: the mask is fitted to it.");
    return;
  }
  try {
    editor.loadMask(await decodeImage(file));
  } catch (err) {
    errors.show("mask", err.message);
  }
});

/** The mask engines the deployment has decide which ways of making a mask are offered. */
function setMaskEngines(engines) {
  const fill = (select, type) => {
    const mine = engines.filter((m) => m.ModelType === type);
    select.replaceChildren(...mine.map((m) => {
      const o = document.createElement("option");
      o.value = m.ModelCode;
      o.textContent = m.Name && m.Name !== m.ModelCode ? `${m.Name} (${m.ModelCode})` : m.ModelCode;
      o.defaultSelected = !!m.Default; // the one a request without the field gets
      return o;
    }));
    return mine.length;
  };
  const offered = { points: fill($("point-engine"), "PointSegmenter"), auto: fill($("clothes-segmenter"), "ClothesSegmenter") };
  for (const [way, count] of Object.entries(offered)) {
    document.querySelector(`[data-needs="${way}"]`).hidden = !count;
    document.querySelector(`[data-needs-many="${way}"]`).hidden = count < 2;
    if (!count && maskMode() === way) $("mode-paint").checked = true;
  }
  maskModeChanged();
}

// Points: each click (after a short pause) asks ExtractContents for the mask under the points.
let pointsTimer = null;
let extraction = 0; // only the latest extraction's mask is used

function pointsChanged() {
  clearTimeout(pointsTimer);
  pointsTimer = setTimeout(extract, 400);
}
$("points-clear").addEventListener("click", () => {
  editor.clearPoints();
  extraction++;
  $("points-status").textContent = "Click on the garment in the photo.";
});

async function extract() {
  const { include, exclude } = editor.points;
  const status = $("points-status");
  errors.clear("points");
  if (!include.length) {
    status.textContent = "Add at least one garment point.";
    return;
  }
  const mine = ++extraction;
  status.textContent = "Finding the garment…";
  status.dataset.state = "working";
  const params = { RawImage: mannequin.b64, IncludePointList: include, OnlyMask: true, ErodeSize: 0 };
  if (exclude.length) params.ExcludePointList = exclude;
  const engine = $("point-engine").selectedOptions[0];
  if (engine && !engine.defaultSelected) params.Engine = engine.value;
  try {
    const TaskUID = await api.submit("ExtractContents", params);
    tasks.add(TaskUID, "ExtractContents", `Garment from ${include.length + exclude.length} point(s)`);
    const detail = await tasks.waitFor(TaskUID);
    if (mine !== extraction) return;
    if (detail.Status !== "Finished") {
      throw new Error(detail.Status === "Error"
        ? `${detail.ErrorMessage} (ErrorCode ${detail.ErrorCode})` : `the task was ${detail.Status}`);
    }
    const img = new Image();
    img.src = localUrl(detail.ImgList[0]);
    await img.decode();
    if (mine !== extraction) return;
    editor.loadMask(img);
    status.textContent = `Mask from ${include.length} garment and ${exclude.length} exclusion point(s). ` +
      "Add points, or touch it up with the brush.";
    status.dataset.state = "ready";
  } catch (err) {
    if (mine !== extraction) return;
    status.textContent = "";
    status.dataset.state = "failed";
    errors.showError(err, "points");
  }
}

// --- cut out the background (RemoveBackground): a product photo made the cut-out GenerateBackgrounds needs ----

/** What the photo's 230 "no alpha channel" error adds in the backgrounds mode. */
const CUT_OUT_HINT = "For a photo, \u201cCut out the background\u201d (step 1) makes the cut-out.";

/** RemoveBackground on the photo with the deployment's default engine; its cut-out (result 0, an RGBA PNG of the
 *  photo's size; result 1 is the mask) then replaces the photo, so Generate sends it as TransparentForeground. */
async function cutOut() {
  errors.clear("cut-out");
  errors.clear("mannequin");
  if (!keys) return errors.show("keys", "Enter your PublicKey and PrivateKey first.");
  if (!mannequin) return errors.show("cut-out", "Choose a product photo first.");
  const mine = photoVersion;
  const source = mannequin;
  const button = $("cut-out");
  const status = $("cut-out-status");
  button.disabled = true;
  status.textContent = "Sending…";
  status.dataset.state = "working";
  try {
    const TaskUID = await api.submit("RemoveBackground", { RawImage: source.b64 });
    tasks.add(TaskUID, "RemoveBackground", `Cut out ${source.width}×${source.height}`);
    status.textContent = "Cutting out the background…";
    const detail = await tasks.waitFor(TaskUID, (d) => {
      if (mine !== photoVersion) return;
      status.textContent = d.Status === "Queuing" ? "Queuing: waiting for a worker…" : "Cutting out the background…";
    });
    if (detail.Status !== "Finished") {
      throw new Error(detail.Status === "Error"
        ? `${detail.ErrorMessage} (ErrorCode ${detail.ErrorCode})` : `the task was ${detail.Status}`);
    }
    const response = await fetch(localUrl(detail.ImgList[0]));
    if (!response.ok) throw new Error(`the cut-out could not be read (HTTP ${response.status})`);
    const blob = await response.blob();
    const img = new Image();
    img.src = URL.createObjectURL(blob);
    await img.decode();
    if (mine !== photoVersion) return; // another photo was chosen meanwhile
    const name = $("mannequin-name").textContent.replace(/( cut out)?, \d+ × \d+$/, "");
    usePhoto({ b64: await fileToBase64(blob), url: img.src, width: img.naturalWidth, height: img.naturalHeight },
      `${name} cut out, ${img.naturalWidth} × ${img.naturalHeight}`);
    status.textContent = "Cut out: Generate now sends the cut-out (its transparent pixels get the scene).";
    status.dataset.state = "ready";
  } catch (err) {
    if (mine !== photoVersion) return;
    status.textContent = "";
    status.dataset.state = "failed";
    // at the button, not at a field of another flow (RawImage is also the eraser's field)
    errors.show("cut-out", err.retCode > 0 ? `${err.message} (RetCode ${err.retCode})` : err.message);
  } finally {
    if (mine === photoVersion) button.disabled = false;
  }
}
$("cut-out").addEventListener("click", cutOut);

// --- the background reference ------------------------------------------------------------------------------

$("background-input").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  errors.clear("background");
  if (!file) return;
  try {
    const img = await decodeImage(file);
    background = { b64: await fileToBase64(file), url: img.src };
  } catch (err) {
    errors.show("background", err.message);
    return;
  }
  $("background-preview").src = background.url;
  $("background-preview").hidden = $("background-remove").hidden = false;
});
$("background-remove").addEventListener("click", () => {
  background = null;
  $("background-input").value = "";
  $("background-preview").hidden = $("background-remove").hidden = true;
});

// --- what to make: GenerateFromMannequin, or GenerateBackgrounds (a scene behind a cut-out) ------------------

const taskKind = () => $("task-kind").value;

function kindChanged() {
  for (const part of document.querySelectorAll("[data-for-kind]")) {
    part.hidden = !part.dataset.forKind.split(" ").includes(taskKind());
  }
  errors.clear();
}
$("task-kind").addEventListener("change", kindChanged);

/** A GenerateBackgrounds request from the form: the cut-out (its alpha checked by the server: 230 naming
 *  TransparentForeground, shown at the photo) and the optional background reference. */
function backgroundsRequest() {
  const images = [mannequin.b64];
  const params = { ...form.collect(), ImageList: images,
    TransparentForeground: { ImageIndex: 0, ResizeMode: form.resizeMode } };
  if (!params.ControlNetList) params.ControlNetList = []; // the main model's default control is for mannequins
  if (background) {
    images.push(background.b64);
    params.BackgroundImage2Image = { ImageIndex: 1, ReferStrength: form.referStrength };
  }
  errors.route("TransparentForeground", "mannequin");
  errors.route("ImageList[0]", "mannequin");
  errors.route("ImageList[1]", "background");
  errors.route("BackgroundImage2Image", "background");
  return params;
}

/** A ModifyMaskedPixels request: the photo and, when something is marked, the mask (white = redrawn); an
 *  Error (shown at the mask) for the automatic clothes mask, which marks what a mannequin photo keeps. */
function modifyRequest() {
  const images = [mannequin.b64];
  const masked = { ImageIndex: 0, ResizeMode: form.resizeMode };
  if (maskMode() === "auto") throw new Error("Automatic finds clothes to keep: paint (or click) what to redraw.");
  if (editor.garmentPixels()) {
    images.push(editor.exportPng());
    masked.MaskIndex = 1;
  }
  const params = { ...form.collect(), ImageAndMaskList: images, Masked: masked };
  if (!params.ControlNetList) params.ControlNetList = [];
  if (background) {
    images.push(background.b64);
    params.Image2Image = { ImageIndex: images.length - 1, ReferStrength: form.referStrength };
  }
  errors.route("Masked", "mask");
  errors.route("ImageAndMaskList[0]", "mannequin");
  errors.route("ImageAndMaskList[1]", masked.MaskIndex ? "mask" : "background");
  errors.route("ImageAndMaskList[2]", "background");
  errors.route("Image2Image", "background");
  return params;
}

// --- generate, progress, cancel ----------------------------------------------------------------------------

function showProgress(d) {
  $("progress").value = d.Progress || 0;
  const text = {
    Queuing: "Queuing: waiting for a worker…",
    Running: d.TotalSteps ? `Running: step ${d.Step} / ${d.TotalSteps}` : "Running…",
    Finished: "Finished.",
    Error: "Failed.",
    Canceled: "Canceled.",
  }[d.Status];
  $("progress-text").textContent = text || d.Status;
}

async function generate() {
  errors.clear();
  if (!keys) return errors.show("keys", "Enter your PublicKey and PrivateKey first.");
  const backgrounds = taskKind() === "backgrounds";
  if (!mannequin) {
    const what = { backgrounds: "a transparent cut-out or a product photo", modify: "a photo" }[taskKind()]
      || "a mannequin photo";
    return errors.show("mannequin", `Choose ${what} first.`);
  }
  if (backgrounds) return submitAndFollow("GenerateBackgrounds", backgroundsRequest(), "Scene", mannequin.url);
  if (taskKind() === "modify") {
    let params;
    try {
      params = modifyRequest();
    } catch (err) {
      return errors.show("mask", err.message);
    }
    return submitAndFollow("ModifyMaskedPixels", params, "Modify", mannequin.url, params.Masked.ResizeMode);
  }
  const mode = maskMode();
  const images = [mannequin.b64];
  const man = { ImageIndex: 0, ResizeMode: form.resizeMode };
  if (mode === "auto") {
    const segmenter = $("clothes-segmenter").selectedOptions[0];
    if (segmenter && !segmenter.defaultSelected) man.ClothesSegmenter = segmenter.value;
  } else {
    if (!editor.garmentPixels()) {
      return errors.show("mask", mode === "points" ? "No mask yet: click on the garment and wait for its mask."
        : "The mask is empty: paint over the garment (or choose another way to mark it).");
    }
    images.push(editor.exportPng());
    man.ClothesMaskIndex = 1;
  }
  const params = { ...form.collect(), ImageAndMaskList: images, Mannequin: man };
  if (background) {
    images.push(background.b64);
    params.Image2Image = { ImageIndex: images.length - 1, ReferStrength: form.referStrength };
  }
  let faceUnit;
  try {
    faceUnit = face.unit(images);
  } catch (err) {
    return errors.show("face", err.message);
  }
  // where an error about each image goes
  errors.route("ImageAndMaskList[0]", "mannequin");
  errors.route("ImageAndMaskList[1]", mode === "auto" ? "background" : "mask");
  errors.route("ImageAndMaskList[2]", "background");
  for (let i = 0; i < 4; i++) errors.routes.delete(`ControlNetList[${i}]`); // a previous face unit's place
  if (faceUnit) { // the last unit; its errors (and its image's) go to the face reference
    params.ControlNetList = [...(params.ControlNetList || []), faceUnit];
    errors.route(`ControlNetList[${params.ControlNetList.length - 1}]`, "face");
    if (faceUnit.ImageIndex !== undefined) errors.route(`ImageAndMaskList[${faceUnit.ImageIndex}]`, "face");
  }

  return submitAndFollow("GenerateFromMannequin", params, "Generate", mannequin.url, man.ResizeMode, mode);
}

/** Send a generation, follow its progress and put its images in the gallery (compared with `url`). */
async function submitAndFollow(action, params, label, url, resizeMode = params.TransparentForeground?.ResizeMode,
  mode = null) {
  const button = $("generate");
  button.disabled = true;
  $("progress-text").textContent = "Sending…";
  let uid;
  try {
    uid = await api.submit(action, params);
  } catch (err) {
    $("progress-text").textContent = "Not sent.";
    const key = errors.showError(err, /^Persona \[/.test(err.message) ? "face" : "general",
      (code) => form.slotForModel(code) || ($("clothes-segmenter").value === code && mode === "auto" ? "mask" : null));
    if (action === "GenerateBackgrounds" && key === "mannequin" && /no alpha channel/.test(err.message)) {
      errors.show(key, `${errors.slot(key).textContent} ${CUT_OUT_HINT}`); // a photo: the button makes its cut-out
    }
    return;
  } finally {
    button.disabled = false;
  }
  currentTask = uid;
  $("cancel").disabled = false;
  const size = `${params.Width ?? "?"}×${params.Height ?? "?"}`;
  tasks.add(uid, action, `${label} ${size}${params.BatchSize > 1 ? ` ×${params.BatchSize}` : ""}`);
  const before = { url, resizeMode };
  let detail;
  try {
    detail = await tasks.waitFor(uid, (d) => uid === currentTask && showProgress(d));
  } catch (err) {
    if (uid === currentTask) $("cancel").disabled = true;
    errors.showError(err, "general");
    return;
  }
  if (uid === currentTask) {
    showProgress(detail);
    $("cancel").disabled = true;
  }
  if (detail.Status === "Finished") gallery.addTask(detail, before);
  if (detail.Status === "Error") {
    errors.show("general", `The task failed: ${detail.ErrorMessage} (ErrorCode ${detail.ErrorCode})`);
  }
}

$("generate").addEventListener("click", generate);
$("cancel").addEventListener("click", async () => {
  if (!currentTask) return;
  $("cancel").disabled = true;
  $("progress-text").textContent = "Canceling…"; // the task's own state follows from the next poll
  try {
    await tasks.cancel(currentTask);
  } catch (err) {
    $("cancel").disabled = false;
    errors.showError(err, "general");
  }
});

// --- follow-ups of a result: Upscale ×2 (ResizeImage), Restore faces (RestoreFaces) --------------------------

/** ResizeImage's largest side. */
const MAX_RESIZE_SIDE = 4096;

/** The deployment's upscaler models (ListModels' Upscalers) in the select beside the results; Lanczos first. */
function setUpscalers(upscalers) {
  const select = $("upscaler");
  select.replaceChildren(select.options[0], ...upscalers.map((m) => {
    const o = document.createElement("option");
    o.value = m.ModelCode;
    o.textContent = m.Name && m.Name !== m.ModelCode ? `${m.Name} (${m.ModelCode})` : m.ModelCode;
    return o;
  }));
  $("upscaler-row").hidden = !upscalers.length;
}

/** An image of this origin (a result link) as base64, its bytes as stored. */
async function urlToBase64(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`the image could not be read again (HTTP ${response.status}); has it expired?`);
  return fileToBase64(await response.blob());
}

/** What a result's follow-up button sends: twice its size (at most 4096 a side, the aspect ratio kept) with the
 *  chosen upscaler, or its faces restored. */
function followUpRequest(kind, image, b64) {
  if (kind === "faces") return { action: "RestoreFaces", params: { RawImage: b64 }, label: "Restore faces" };
  const scale = Math.min(2, MAX_RESIZE_SIDE / Math.max(image.width, image.height));
  if (scale <= 1) throw new Error(`This image is already ${MAX_RESIZE_SIDE} pixels on a side, ResizeImage's largest.`);
  const [w, h] = [Math.round(image.width * scale), Math.round(image.height * scale)];
  const params = { Image: b64, Width: w, Height: h };
  if ($("upscaler").value) params.Upscaler = $("upscaler").value;
  return { action: "ResizeImage", params, label: `Upscale to ${w}×${h}` };
}

/** Run a result's follow-up; its images join the gallery, compared with the result they came from and captioned
 *  with the task's Notes (which upscaler ran, how many faces were redrawn). */
async function followUp(kind, image, button) {
  errors.clear("results");
  const text = button.textContent;
  button.disabled = true;
  button.textContent = "Working…";
  try {
    const { action, params, label } = followUpRequest(kind, image, await urlToBase64(image.url));
    const TaskUID = await api.submit(action, params);
    tasks.add(TaskUID, action, label);
    const detail = await tasks.waitFor(TaskUID);
    if (detail.Status !== "Finished") {
      throw new Error(detail.Status === "Error"
        ? `${detail.ErrorMessage} (ErrorCode ${detail.ErrorCode})` : `the task was ${detail.Status}`);
    }
    const notes = (detail.Notes || []).filter((n) => !n.startsWith("ignored fields"));
    gallery.addTask(detail, { url: image.url, resizeMode: "JustResize" }, notes.join("; ") || null);
  } catch (err) {
    // beside the results, not next to the generation form's fields (a follow-up's Width is not the form's)
    errors.show("results", err.retCode > 0 ? `${err.message} (RetCode ${err.retCode})` : err.message);
  } finally {
    button.disabled = false;
    button.textContent = text;
  }
}

// --- start -------------------------------------------------------------------------------------------------

maskModeChanged();
maskChanged();
kindChanged();
showKeys(!keys);
if (!window.isSecureContext) {
  // WebCrypto (the signature) and random request ids exist only in a secure context
  errors.show("keys", "Open this page over https, or at http://127.0.0.1 or http://localhost: the browser signs "
    + "requests only in a secure context.");
} else if (keys) {
  connect().then((ok) => ok || showKeys(true));
} else {
  $("public-key").focus();
}
tasks.render();
