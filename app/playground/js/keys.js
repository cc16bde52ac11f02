// The caller's key pair, kept in this browser's local storage (never sent to or served by the gateway:
// only the PublicKey travels, in each request; the PrivateKey only signs).

const PUBLIC = "atelier.publicKey";
const PRIVATE = "atelier.privateKey";

/** The stored pair, or null when none is stored. */
export function loadKeys() {
  const publicKey = localStorage.getItem(PUBLIC);
  const privateKey = localStorage.getItem(PRIVATE);
  return publicKey && privateKey ? { publicKey, privateKey } : null;
}

export function saveKeys(publicKey, privateKey) {
  localStorage.setItem(PUBLIC, publicKey);
  localStorage.setItem(PRIVATE, privateKey);
}

export function forgetKeys() {
  localStorage.removeItem(PUBLIC);
  localStorage.removeItem(PRIVATE);
}
