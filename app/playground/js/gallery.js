// The results: one card per image, newest first. A card compares the result with the image it was made from
// (a range input moves the edge between the two stacked images), links the image for download, offers its seed
// for reuse, and the follow-ups of a result: "Upscale ×2" (ResizeImage) and "Restore faces" (RestoreFaces).

import { localUrl } from "./api.js";
import { h } from "./dom.js";

/** How the mannequin photo was fitted to the output (Mannequin.ResizeMode), as CSS object-fit classes. */
const FIT = { JustResize: "fit-fill", CropAndResize: "fit-cover", ResizeAndFill: "fit-contain" };

export class Gallery {
  /** @param onReuseSeed(seed) called by a card's "Reuse seed" button
   *  @param onFollowUp(kind, image, button) called by a result's "Upscale ×2" (kind "upscale") or "Restore faces"
   *         ("faces") button, with the result's {url, width, height} */
  constructor(root, empty, { onReuseSeed, onFollowUp }) {
    this.root = root;
    this.empty = empty;
    this.onReuseSeed = onReuseSeed;
    this.onFollowUp = onFollowUp;
    this.shown = new Set(); // TaskUIDs already in the gallery
  }

  /** Add a finished task's images. `before`: {url, resizeMode} of the image it was made from (the mannequin
   *  photo, or the result a follow-up started from; for the comparison), when this page still has it.
   *  `caption`: a line shown under each image (a follow-up's Notes). */
  addTask(detail, before = null, caption = null) {
    if (this.shown.has(detail.TaskUID)) return;
    this.shown.add(detail.TaskUID);
    const cards = [];
    detail.ImgList.forEach((link, i) => {
      const seed = detail.Action === "GenerateFromMannequin" ? detail.Seed + i : null;
      cards.push(this.card(localUrl(link), `${detail.TaskUID}-${i}.png`, seed, before, caption, true));
    });
    if (detail.ClothesMaskUrl) {
      cards.push(this.card(localUrl(detail.ClothesMaskUrl), `${detail.TaskUID}-clothes-mask.png`, null, null,
        "The clothes mask the server made"));
    }
    this.root.prepend(...cards);
    this.empty.hidden = true;
  }

  card(url, filename, seed, before, caption = null, followUps = false) {
    const after = h("img", { src: url, alt: caption || "Generated image", className: "after",
      dataset: { testid: "result-image" } });
    const frame = h("div", { className: "compare" }, after);
    const figure = h("figure", { className: "card", dataset: { testid: "result-card" } }, frame);
    after.addEventListener("load", () => {
      frame.style.aspectRatio = `${after.naturalWidth} / ${after.naturalHeight}`;
    });
    if (before) {
      // the mannequin on top, cut at the slider's position: left of it "before", right of it "after"
      const photo = h("img", { src: before.url, alt: "The mannequin photo", className: `before ${FIT[before.resizeMode] || ""}` });
      const edge = h("div", { className: "edge" });
      const range = h("input", { type: "range", min: 0, max: 100, value: 50, className: "compare-range",
        ariaLabel: "Before / after", dataset: { testid: "compare-slider" } });
      const place = () => {
        photo.style.clipPath = `inset(0 ${100 - range.value}% 0 0)`;
        edge.style.left = `${range.value}%`;
      };
      range.addEventListener("input", place);
      place();
      frame.append(photo, edge);
      figure.append(h("label", { className: "slider compare-label" }, "Before", range, "After"));
    }
    const actions = h("figcaption", { className: "row" },
      h("a", { href: url, download: filename, className: "button", dataset: { testid: "download" } }, "Download"));
    if (seed !== null) {
      const reuse = h("button", { type: "button", dataset: { testid: "reuse-seed" } }, `Reuse seed ${seed}`);
      reuse.addEventListener("click", () => this.onReuseSeed(seed));
      actions.append(reuse);
    }
    if (followUps) {
      for (const [kind, label, testid] of [["upscale", "Upscale ×2", "upscale"], ["faces", "Restore faces", "restore-faces"]]) {
        const button = h("button", { type: "button", dataset: { testid } }, label);
        button.addEventListener("click", () => this.onFollowUp(kind,
          { url, width: after.naturalWidth, height: after.naturalHeight }, button));
        actions.append(button);
      }
    }
    if (caption) actions.prepend(h("span", { className: "hint", dataset: { testid: "result-caption" } }, caption));
    figure.append(actions);
    return figure;
  }
}
