"""Who owns a saved model: an owner key kept in the visitor's browser, the signed-in Hugging Face
user, or, for an API client that sends no key, its session.

- A page gets a random owner key from the server on its first load and keeps it in the browser's
  localStorage (`gr.BrowserState`), so a reload (or a later visit) is the same owner. The key is a
  bearer secret: the server keeps only its hash (the owner's folder name), never the key. Where the
  browser denies the page its storage (a third-party frame with third-party cookies blocked, as a
  Space's iframe in a private window is), the key lives in the page's memory (`storage_fallback_head`):
  the page works, and a reload is a new owner.
- Where the Space enables OAuth (`hf_oauth: true` in the README's front matter, which sets
  `OAUTH_CLIENT_ID`), a signed-in visitor is their Hugging Face user, whatever key the browser holds;
  their saves never expire.
- API clients send the key as the last input of every endpoint that touches saved models (the
  page's BrowserState travels there too). Without one, the caller's Gradio session owns what it
  saves: one `gradio_client.Client` keeps its models for its lifetime, and a plain REST call
  (a new session each time) only reaches models published by their owners.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webapp.i18n import UserError

log = logging.getLogger(__name__)

KEY_BYTES = 32  # a new key: 43 URL-safe characters
_KEY = re.compile(r"[A-Za-z0-9_-]{32,128}")
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
STORAGE_KEY = "simple-llm-owner"  # the page's localStorage entry
SECRET_FILE = ".browser-state-secret"
OAUTH_MODULES = ("authlib", "itsdangerous")  # what gr.LoginButton needs (gradio[oauth])


# Gradio's BrowserState reads localStorage unguarded: where reading it throws ("Access is denied
# for this document"), the page would never finish loading. A Storage kept in the page's memory
# stands in for a denied one (Object.keys of it lists nothing, as Gradio's clean-up expects).
_STORAGE_FALLBACK_JS = """<script>
(() => {
  class MemoryStorage {
    #items = new Map();
    get length() { return this.#items.size; }
    key(index) { return [...this.#items.keys()][index] ?? null; }
    getItem(key) { return this.#items.get(String(key)) ?? null; }
    setItem(key, value) { this.#items.set(String(key), String(value)); }
    removeItem(key) { this.#items.delete(String(key)); }
    clear() { this.#items.clear(); }
  }
  for (const name of ["localStorage", "sessionStorage"]) {
    try { window[name].length; } catch (denied) {
      Object.defineProperty(window, name, { value: new MemoryStorage(), configurable: true });
    }
  }
})();
</script>
"""


def storage_fallback_head() -> str:
    """A page-head script: a page denied its storage keeps the owner key in memory instead of
    failing to load."""
    return _STORAGE_FALLBACK_JS


@dataclass(frozen=True)
class Owner:
    """A saved model's owner. `id` names its folder: "k-<hash of key>", "s-<hash of session>" or
    "hf-<username>"; `expires`: its saves are deleted after some days unused (anonymous owners)."""

    id: str
    expires: bool
    user: str = ""  # the Hugging Face username of a signed-in owner

    @property
    def tag(self) -> str:
        """How other visitors see this owner next to a published model's name: the username, or a
        short hash that reveals nothing of the key."""
        return self.user or tag_of(self.id)


def tag_of(owner_id: str) -> str:
    if owner_id.startswith("hf-"):
        return owner_id[3:]
    return hashlib.sha256(owner_id.encode()).hexdigest()[:8]


def new_key() -> str:
    return secrets.token_urlsafe(KEY_BYTES)


def valid_key(key: Any) -> bool:
    return isinstance(key, str) and _KEY.fullmatch(key) is not None


def of_key(key: str) -> Owner:
    if not valid_key(key):
        raise UserError("error.bad_owner_key")
    return Owner("k-" + _digest(key), expires=True)


def of_session(session_id: str) -> Owner:
    return Owner("s-" + _digest("session:" + session_id), expires=True)


def of_user(username: str) -> Owner:
    name = username if _USERNAME.fullmatch(username) else "x" + _digest(username)
    return Owner("hf-" + name, expires=False, user=username)


def resolve(key: Any, profile: Any, session_id: str) -> Owner:
    """The caller's owner: the signed-in user, else the owner of `key`, else the session.
    A key that is not a key is refused (a typo must not silently make a new owner)."""
    username = getattr(profile, "username", None) if profile is not None else None
    if username:
        return of_user(str(username))
    if key is None or (isinstance(key, str) and not key.strip()):
        return of_session(session_id)
    return of_key(key.strip() if isinstance(key, str) else key)


def oauth_enabled() -> bool:
    """True in a Space with `hf_oauth: true` where Gradio's OAuth extras (`gradio[oauth]`) are
    installed: the page then offers "Sign in with Hugging Face". Elsewhere owners are keys only."""
    if not (os.environ.get("OAUTH_CLIENT_ID") and os.environ.get("SYSTEM") == "spaces"):
        return False
    missing = [name for name in OAUTH_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        log.warning("OAuth is configured but %s is not installed: sign-in is off", ", ".join(missing))
    return not missing


def browser_secret(folder: Path) -> str:
    """The secret Gradio encrypts the page's stored key with. It is kept in the artifact folder so
    that a restarted server still reads what browsers stored (a random one per process would make
    every visitor a new owner after a restart). It ships to the page, so it protects nothing by
    itself: the key is the secret, and only this browser holds it."""
    path = folder / SECRET_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
        if text:
            return text
    except OSError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    text = secrets.token_hex(16)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text, encoding="ascii")
    os.replace(tmp, path)
    return path.read_text(encoding="ascii").strip()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:32]
