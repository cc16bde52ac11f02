// The API client: every call is a signed POST of a JSON body to the gateway's root (same origin).
// call(action, params) resolves with the answer (RetCode 0) or rejects with an ApiError.

import { sign } from "./sign.js";

/** The gateway's API endpoint: the folder above /playground/ (so a path prefix behind a proxy works too). */
export const API_URL = new URL("../../", import.meta.url);

/** An API-level failure: RetCode and Message as the server wrote them, and the field or model it names. */
export class ApiError extends Error {
  constructor(retCode, message) {
    super(message);
    this.name = "ApiError";
    this.retCode = retCode;
    this.field = fieldOf(message); // e.g. "Width", "SubModelList[1].InferenceParams.LoraWeight"
    this.model = modelOf(message); // e.g. "demo-lora" in "Model [demo-lora] not exists"
  }
}

/** The field path a message names: "Params [Width] not available: ..." -> "Width"; else null. */
export function fieldOf(message) {
  const m = /^Params \[(.+?)\] not available/.exec(message || "");
  return m ? m[1] : null;
}

/** The ModelCode a message names: "Model [x] not exists" -> "x"; else null. */
export function modelOf(message) {
  const m = /^Model \[(.+?)\] (?:not exists|could not)/.exec(message || "");
  return m ? m[1] : null;
}

/** A result link (ImgList, ClothesMaskUrl) as a URL of this page's origin: the gateway may write its
 *  public address (another host name for the same server), which the page's CSP would refuse. */
export function localUrl(link) {
  const url = new URL(link, API_URL);
  const at = url.pathname.lastIndexOf("/results/");
  if (at < 0) throw new Error(`not a result link: ${link}`);
  return new URL(url.pathname.slice(at + 1) + url.search, API_URL).href;
}

// app/contract/limits.py PRIORITY_RANGE is 0..9, default 5; the key's MaxPriority may lower it (a Note says so)
export const INTERACTIVE_PRIORITY = 8;

/** A client signing with the keys `getKeys()` returns ({publicKey, privateKey}, or null). */
export function createClient(getKeys) {
  async function call(action, params = {}) {
    const keys = getKeys();
    if (!keys) throw new ApiError(170, "Missing signature: enter your PublicKey and PrivateKey first");
    const body = { request_uuid: crypto.randomUUID(), ...params, Action: action, PublicKey: keys.publicKey };
    body.Signature = await sign(body, keys.privateKey);
    let response;
    try {
      response = await fetch(API_URL, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(-1, `The gateway did not answer (${e.message}); is it running?`);
    }
    let answer;
    try {
      answer = await response.json();
    } catch {
      throw new ApiError(-1, `The gateway answered HTTP ${response.status} without a JSON body`);
    }
    if (answer.RetCode !== 0) throw new ApiError(answer.RetCode, String(answer.Message ?? ""));
    return answer;
  }
  /** A task-creating action, at the playground's Priority: someone is waiting at the screen for it, so it runs
   *  before a catalogue batch queued at the default (docs/API.md "Priority"). Resolves with its TaskUID. */
  async function submit(action, params = {}) {
    return (await call(action, { ...params, Priority: INTERACTIVE_PRIORITY })).TaskUID;
  }
  return { call, submit };
}
