// PICPIK's request signature, computed in the browser (the rules of app/signature.py, docs/API.md "Signature").
//
// The signing string is every top-level field except `Signature`, sorted by name in UTF-8 byte order
// (= code-point order; NOT JavaScript's default UTF-16 order), each written as name + encode(value) with no
// separators, then the PrivateKey. The signature is the lower-case hex SHA-1 of its UTF-8 bytes.
//
// encode(value): booleans `true`/`false`; null (and undefined) the empty string; strings as they are;
// numbers as the shortest decimal that reads back as the same double, always positional (no exponent);
// objects: their fields sorted by name, each name + encode(value); arrays: the elements one after another.
//
// Numbers: JSON.stringify writes a whole number as digits, which the server reads as an integer and writes
// the same way, and any other number in the shortest round-trip spelling, which the server also writes
// positionally; only String(n)'s exponent forms (below 1e-6, from 1e21 on) need converting.

const SIGNATURE_FIELD = "Signature";

/** The published spelling of a finite number: shortest round-trip digits, positional. */
export function encodeNumber(n) {
  if (!Number.isFinite(n)) throw new TypeError(`cannot sign a non-finite number: ${n}`);
  if (n === 0) return "0"; // 0 and -0
  const text = String(n);
  const e = text.indexOf("e");
  if (e < 0) return text;
  // "-1.2345e-7" -> sign "-", digits "12345", exponent -7 (the power of ten of the first digit)
  const sign = n < 0 ? "-" : "";
  const mantissa = text.slice(sign.length, e);
  const exponent = Number(text.slice(e + 1));
  const digits = mantissa.replace(".", "");
  const point = exponent + 1; // how many digits stand before the decimal point
  if (point <= 0) return `${sign}0.${"0".repeat(-point)}${digits}`;
  if (point >= digits.length) return sign + digits + "0".repeat(point - digits.length);
  return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
}

/** Compare two strings by code points (the order of their UTF-8 bytes). */
export function compareKeys(a, b) {
  const x = Array.from(a, (c) => c.codePointAt(0));
  const y = Array.from(b, (c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) return x[i] - y[i];
  }
  return x.length - y.length;
}

/** The signing form of one value. */
export function encodeValue(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v === "number") return encodeNumber(v);
  if (typeof v === "string") return v;
  if (Array.isArray(v)) return v.map(encodeValue).join("");
  if (typeof v === "object") {
    return Object.keys(v).sort(compareKeys).map((k) => k + encodeValue(v[k])).join("");
  }
  throw new TypeError(`cannot sign a value of type ${typeof v}`);
}

/** The string whose SHA-1 is the signature. */
export function signingString(params, privateKey) {
  const keys = Object.keys(params).filter((k) => k !== SIGNATURE_FIELD).sort(compareKeys);
  return keys.map((k) => k + encodeValue(params[k])).join("") + privateKey;
}

/** Lower-case hex SHA-1 of a string's UTF-8 bytes, with WebCrypto. */
export async function sha1Hex(text) {
  if (!globalThis.crypto || !crypto.subtle) {
    throw new Error("this page needs a secure context (https, or http://127.0.0.1 / localhost) to sign requests");
  }
  const digest = await crypto.subtle.digest("SHA-1", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The `Signature` of a request body (every field but `Signature`) under a PrivateKey. */
export async function sign(params, privateKey) {
  return sha1Hex(signingString(params, privateKey));
}
