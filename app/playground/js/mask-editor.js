// The clothes mask editor: a canvas of the photo's own size laid over the photo (displayed scaled).
// Painted pixels are the garment (white in the exported mask = kept pixel for pixel by the server).
//
// The canvas holds the mask in its alpha channel, drawn in one tint colour and shown half-transparent.
// After every change it is thresholded (alpha >= 128 -> opaque, else clear), so what is shown is exactly
// what is sent: the export is a black-and-white PNG of the photo's size.
//
// Modes: "paint" (brush and eraser), "points" (clicks give garment / exclusion points, in the photo's pixel
// coordinates, for ExtractContents), "upload" (a mask file), "auto" (no mask: the server's clothes segmenter).

const TINT = [0, 170, 255]; // the colour the mask is shown in
const UNDO_BYTES = 200e6; // memory the undo snapshots may take together
const MAX_UNDO = 20;

export class MaskEditor {
  /**
   * @param {object} els  stage (wrapper), photo (img), canvas, pointsLayer (for the markers), cursor (brush preview)
   * @param {object} hooks onChange() after the mask changed; onPoints(points) after a point was added/cleared
   */
  constructor(els, hooks = {}) {
    Object.assign(this, els);
    this.hooks = hooks;
    this.ctx = this.canvas.getContext("2d", { willReadFrequently: true });
    this.mode = "paint";
    this.tool = "brush"; // or "eraser"
    this.brushSize = 24; // in screen pixels: the brush looks the same whatever the photo's resolution
    this.pointKind = "include"; // or "exclude"
    this.points = { include: [], exclude: [] };
    this.undoStack = [];
    this.width = 0;
    this.height = 0;
    this.stroke = null;
    this.bindPointer();
  }

  get hasPhoto() {
    return this.width > 0;
  }

  /** Show a new photo (its URL and natural size); the mask, the points and the undo history start empty. */
  setPhoto(url, width, height) {
    this.photo.src = url;
    this.width = this.canvas.width = width;
    this.height = this.canvas.height = height;
    // the stage keeps the photo's aspect ratio, and leaves room on the screen for the mask tools below it
    this.stage.style.aspectRatio = `${width} / ${height}`;
    this.stage.style.maxWidth = `calc(max(320px, 100vh - 360px) * ${width / height})`;
    this.stage.hidden = false;
    this.undoStack = [];
    this.clearPoints();
    this.ctx.clearRect(0, 0, width, height);
    this.changed();
  }

  setMode(mode) {
    this.mode = mode;
    this.stage.dataset.mode = mode; // CSS: the cursor, and the mask hidden in "auto"
  }

  setVisible(visible) {
    this.canvas.classList.toggle("is-hidden", !visible);
  }

  // --- edits -----------------------------------------------------------------------------------------------

  snapshot() {
    if (!this.hasPhoto) return;
    const limit = Math.max(1, Math.min(MAX_UNDO, Math.floor(UNDO_BYTES / (this.width * this.height * 4))));
    this.undoStack.push(this.ctx.getImageData(0, 0, this.width, this.height));
    while (this.undoStack.length > limit) this.undoStack.shift();
  }

  get canUndo() {
    return this.undoStack.length > 0;
  }

  undo() {
    const previous = this.undoStack.pop();
    if (!previous) return;
    this.ctx.putImageData(previous, 0, 0);
    this.changed();
  }

  clear() {
    if (!this.hasPhoto) return;
    this.snapshot();
    this.ctx.clearRect(0, 0, this.width, this.height);
    this.changed();
  }

  /** Garment <-> not garment. */
  invert() {
    if (!this.hasPhoto) return;
    this.snapshot();
    this.rewrite((alpha) => alpha < 128);
  }

  /** Take a mask image (an <img> or bitmap, any size: scaled to the photo's, nearest neighbour): luminance
   *  >= 128 is garment; transparent pixels count as black, as the server reads masks. */
  loadMask(image) {
    const scratch = document.createElement("canvas");
    scratch.width = this.width;
    scratch.height = this.height;
    const sctx = scratch.getContext("2d", { willReadFrequently: true });
    sctx.imageSmoothingEnabled = false;
    sctx.drawImage(image, 0, 0, this.width, this.height);
    const src = sctx.getImageData(0, 0, this.width, this.height).data;
    this.snapshot();
    this.rewrite((_, i) => ((0.299 * src[i] + 0.587 * src[i + 1] + 0.114 * src[i + 2]) * src[i + 3]) / 255 >= 128);
  }

  /** Set every pixel: garment when isGarment(alpha, index) is true. */
  rewrite(isGarment) {
    const img = this.ctx.getImageData(0, 0, this.width, this.height);
    const d = img.data;
    for (let i = 0; i < d.length; i += 4) {
      const on = isGarment(d[i + 3], i);
      d[i] = TINT[0];
      d[i + 1] = TINT[1];
      d[i + 2] = TINT[2];
      d[i + 3] = on ? 255 : 0;
    }
    this.ctx.putImageData(img, 0, 0);
    this.changed();
  }

  changed() {
    this.hooks.onChange?.();
  }

  // --- reading the mask ---------------------------------------------------------------------------------

  /** How many pixels are garment. */
  garmentPixels() {
    if (!this.hasPhoto) return 0;
    const d = this.ctx.getImageData(0, 0, this.width, this.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] >= 128) n++;
    return n;
  }

  /** The mask as the server reads it: a PNG of the photo's size, white = garment, black elsewhere; base64
   *  without the data-URL prefix. */
  exportPng() {
    const src = this.ctx.getImageData(0, 0, this.width, this.height).data;
    const out = new ImageData(this.width, this.height);
    for (let i = 0; i < src.length; i += 4) {
      const v = src[i + 3] >= 128 ? 255 : 0;
      out.data[i] = out.data[i + 1] = out.data[i + 2] = v;
      out.data[i + 3] = 255;
    }
    const scratch = document.createElement("canvas");
    scratch.width = this.width;
    scratch.height = this.height;
    scratch.getContext("2d").putImageData(out, 0, 0);
    return scratch.toDataURL("image/png").split(",", 2)[1];
  }

  // --- points ----------------------------------------------------------------------------------------------

  addPoint(kind, x, y) {
    this.points[kind].push({ X: x, Y: y });
    this.renderPoints();
    this.hooks.onPoints?.(this.points);
  }

  clearPoints() {
    this.points = { include: [], exclude: [] };
    this.renderPoints();
  }

  renderPoints() {
    this.pointsLayer.replaceChildren();
    for (const kind of ["include", "exclude"]) {
      for (const p of this.points[kind]) {
        const dot = document.createElement("span");
        dot.className = `point point-${kind}`;
        dot.title = `${kind === "include" ? "garment" : "exclusion"} point (${p.X}, ${p.Y})`;
        dot.style.left = `${((p.X + 0.5) / this.width) * 100}%`;
        dot.style.top = `${((p.Y + 0.5) / this.height) * 100}%`;
        this.pointsLayer.append(dot);
      }
    }
  }

  // --- pointer input ---------------------------------------------------------------------------------------

  /** A pointer event's position in the photo's pixels (fractional), and the photo pixels per screen pixel. */
  toImage(e) {
    const rect = this.canvas.getBoundingClientRect();
    const scale = this.width / rect.width;
    return { x: (e.clientX - rect.left) * scale, y: (e.clientY - rect.top) * (this.height / rect.height), scale };
  }

  bindPointer() {
    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => {
      if (!this.hasPhoto || e.button !== 0) return;
      e.preventDefault();
      const p = this.toImage(e);
      if (this.mode === "points") {
        const x = Math.min(this.width - 1, Math.max(0, Math.floor(p.x)));
        const y = Math.min(this.height - 1, Math.max(0, Math.floor(p.y)));
        this.addPoint(this.pointKind, x, y);
        return;
      }
      if (this.mode !== "paint" && this.mode !== "upload") return;
      c.setPointerCapture(e.pointerId);
      this.snapshot();
      this.stroke = { x: p.x, y: p.y };
      this.drawSegment(p, p);
    });
    c.addEventListener("pointermove", (e) => {
      this.moveCursor(e);
      if (!this.stroke) return;
      const p = this.toImage(e);
      this.drawSegment(this.stroke, p);
      this.stroke = { x: p.x, y: p.y };
    });
    const end = () => {
      if (!this.stroke) return;
      this.stroke = null;
      this.rewrite((alpha) => alpha >= 128); // threshold: what is shown is what is sent
    };
    c.addEventListener("pointerup", end);
    c.addEventListener("pointercancel", end);
    c.addEventListener("pointerleave", () => this.cursor.classList.remove("is-on"));
  }

  drawSegment(from, to) {
    const ctx = this.ctx;
    ctx.save();
    ctx.globalCompositeOperation = this.tool === "eraser" ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = `rgb(${TINT.join(",")})`;
    ctx.lineWidth = this.brushSize * to.scale;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
    ctx.restore();
  }

  /** The round brush preview under the pointer (paint mode). */
  moveCursor(e) {
    const painting = this.hasPhoto && (this.mode === "paint" || this.mode === "upload");
    this.cursor.classList.toggle("is-on", painting);
    if (!painting) return;
    const rect = this.stage.getBoundingClientRect();
    this.cursor.style.width = this.cursor.style.height = `${this.brushSize}px`;
    this.cursor.style.left = `${e.clientX - rect.left}px`;
    this.cursor.style.top = `${e.clientY - rect.top}px`;
  }
}
