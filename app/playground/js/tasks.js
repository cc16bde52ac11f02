// The tasks this browser made, kept in local storage (per PublicKey) across reloads until they expire: entries
// older than 24 hours (the server's result retention) and those ListTasksDetails no longer reports are
// dropped. While any is Queuing or Running, their state is polled; waitFor(uid) follows one task to its end.

import { h } from "./dom.js";

const STORE = "atelier.tasks";
const KEEP_MS = 24 * 3600 * 1000;
const MAX_TASKS = 100; // ListTasksDetails takes at most 100 TaskUIDs
const POLL_MS = 500;
export const ENDED = new Set(["Finished", "Error", "Canceled"]);

export class TaskList {
  /**
   * @param api          the API client
   * @param publicKey()  the current PublicKey (tasks of other keys are kept but neither shown nor polled)
   * @param onShow(detail) a Finished task's "Show images" button
   */
  constructor(root, empty, api, publicKey, { onShow }) {
    this.root = root;
    this.empty = empty;
    this.api = api;
    this.publicKey = publicKey;
    this.onShow = onShow;
    this.details = new Map(); // TaskUID -> its latest TaskDetail
    this.waiters = new Map(); // TaskUID -> [{resolve, reject, onUpdate}]
    this.timer = null;
    this.running = null;
    this.again = false;
    this.entries = this.load();
  }

  load() {
    let entries = [];
    try {
      entries = JSON.parse(localStorage.getItem(STORE) || "[]");
    } catch {
      entries = [];
    }
    const now = Date.now();
    return (Array.isArray(entries) ? entries : []).filter((e) => e && e.uid && now - e.createdAt < KEEP_MS);
  }

  save() {
    localStorage.setItem(STORE, JSON.stringify(this.entries));
  }

  mine() {
    const pub = this.publicKey();
    return this.entries.filter((e) => e.publicKey === pub);
  }

  /** Remember a task just created; `label` says what it is ("Generate 256×384"). */
  add(uid, action, label) {
    this.entries.push({ uid, action, label, publicKey: this.publicKey(), createdAt: Date.now(), status: "Queuing" });
    const mine = this.mine();
    if (mine.length > MAX_TASKS) {
      const drop = new Set(mine.slice(0, mine.length - MAX_TASKS).map((e) => e.uid));
      this.entries = this.entries.filter((e) => !drop.has(e.uid));
    }
    this.save();
    this.render();
    this.refreshSoon(0);
  }

  /** Resolves with the task's TaskDetail once it ended; onUpdate(detail) on every poll until then. */
  waitFor(uid, onUpdate = () => {}) {
    return new Promise((resolve, reject) => {
      if (!this.waiters.has(uid)) this.waiters.set(uid, []);
      this.waiters.get(uid).push({ resolve, reject, onUpdate });
      this.refreshSoon(0);
    });
  }

  async cancel(uid) {
    await this.api.call("CancelTask", { TaskUIDList: [uid] });
    this.refreshSoon(0);
  }

  refreshSoon(delay = POLL_MS) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), delay);
  }

  /** Ask the server for the state of this key's tasks (one call at a time), then poll again while any is
   *  active. Errors (a network hiccup) are retried a little later. */
  async refresh() {
    if (this.running) {
      this.again = true; // asked for during a poll: poll once more after it
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await this.poll();
      } while (this.again);
    })().finally(() => (this.running = null));
    return this.running;
  }

  async poll() {
    const mine = this.mine();
    if (!mine.length) {
      this.render();
      return;
    }
    let answer;
    try {
      answer = await this.api.call("ListTasksDetails", { TaskUIDList: mine.map((e) => e.uid) });
    } catch (err) {
      this.failWaiters(err);
      this.render(err.message);
      if (err.retCode === -1 || err.retCode === 150) this.refreshSoon(3000);
      return;
    }
    const known = new Map(answer.TaskDetailList.map((d) => [d.TaskUID, d]));
    const gone = new Set(mine.filter((e) => !known.has(e.uid)).map((e) => e.uid));
    this.entries = this.entries.filter((e) => !gone.has(e.uid));
    for (const e of this.entries) {
      const d = known.get(e.uid);
      if (d) e.status = d.Status;
    }
    this.save();
    for (const [uid, d] of known) this.details.set(uid, d);
    this.notify(known, gone);
    this.render();
    if ([...known.values()].some((d) => !ENDED.has(d.Status)) || this.waiters.size) this.refreshSoon();
  }

  notify(known, gone) {
    for (const [uid, list] of this.waiters) {
      const d = known.get(uid);
      if (d) {
        for (const w of list) w.onUpdate(d);
        if (!ENDED.has(d.Status)) continue;
        for (const w of list) w.resolve(d);
      } else if (gone.has(uid)) {
        for (const w of list) w.reject(new Error(`task ${uid} is no longer known to the server`));
      } else continue;
      this.waiters.delete(uid);
    }
  }

  failWaiters(err) {
    if (err.retCode === -1 || err.retCode === 150) return; // transient: keep waiting
    for (const list of this.waiters.values()) for (const w of list) w.reject(err);
    this.waiters.clear();
  }

  render(problem = "") {
    const mine = this.mine().slice().reverse(); // newest first
    // keep the keyboard focus on the same button across the re-rendering
    const focused = this.root.contains(document.activeElement) ? document.activeElement : null;
    const focusUid = focused?.closest("[data-uid]")?.dataset.uid;
    const focusId = focused?.dataset.testid;
    this.root.replaceChildren(...mine.map((e) => this.item(e)));
    if (focusUid) {
      const again = this.root.querySelector(`[data-uid="${CSS.escape(focusUid)}"] [data-testid="${focusId}"]`);
      (again || this.root.querySelector(`[data-uid="${CSS.escape(focusUid)}"] button`))?.focus();
    }
    this.empty.hidden = mine.length > 0;
    this.empty.textContent = problem ? `Could not refresh the tasks: ${problem}` : "None yet.";
    if (problem) this.empty.hidden = false;
  }

  item(e) {
    const d = this.details.get(e.uid);
    const status = d?.Status || e.status || "?";
    let state = status;
    if (status === "Running" && d?.TotalSteps) state += ` ${d.Step}/${d.TotalSteps}`;
    const li = h("li", { className: `task status-${status.toLowerCase()}`, dataset: { testid: "task", uid: e.uid } },
      h("span", { className: "task-what" }, e.label || e.action),
      h("code", { className: "task-uid", title: e.uid }, e.uid.slice(0, 8)),
      h("span", { className: "badge", dataset: { testid: "task-status" } }, state),
      h("time", { dateTime: new Date(e.createdAt).toISOString() }, new Date(e.createdAt).toLocaleTimeString()));
    if (d?.Status === "Error") {
      li.append(h("p", { className: "error", dataset: { testid: "task-error" } },
        `${d.ErrorMessage || d.ErrorMassage || "failed"} (ErrorCode ${d.ErrorCode})`));
    }
    if (d?.Status === "Finished" && d.ImgList?.length) {
      const show = h("button", { type: "button", className: "link", dataset: { testid: "task-show" } }, "Show images");
      show.addEventListener("click", () => this.onShow(d));
      li.append(show);
    }
    if (!ENDED.has(status)) {
      const cancel = h("button", { type: "button", className: "link", dataset: { testid: "task-cancel" } }, "Cancel");
      cancel.addEventListener("click", () => this.cancel(e.uid).catch((err) => this.render(err.message)));
      li.append(cancel);
    }
    return li;
  }
}
