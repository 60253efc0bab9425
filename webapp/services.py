"""What every tab of the app shares: the server's settings, the session registry (with its
admission of heavy jobs, `webapp.capacity`), disk reservations (`webapp.storage`), who the caller
is for saved models (`webapp.owners`), and the wrappers that turn any error of a handler into a
`gr.Error` in the caller's language (from the browser's Accept-Language).

The tabs (`webapp.ui_train`, `webapp.ui_generate`, `webapp.ui_models`) each get one `Services`;
nothing here belongs to one tab.

No `from __future__ import annotations` here: Gradio reads the `gr.Request` annotations at runtime
to inject them.
"""

import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from webapp import library, models, owners, storage
from webapp.i18n import UserError, language, t
from webapp.sessions import Session, SessionRegistry
from webapp.settings import Settings

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often a running job is rendered (and a cancel can land)


def lang_of(request: gr.Request | None) -> str:
    """The caller's language, from the request's Accept-Language header (English without a request)."""
    if request is None:
        return "en"
    return language(request.headers.get("accept-language", ""))


def as_gr_error(err: BaseException, lang: str) -> gr.Error:
    """`err` as the `gr.Error` a user sees: theirs to fix (translated), or an internal one (logged)."""
    if isinstance(err, gr.Error):
        return err
    if isinstance(err, UserError):
        return gr.Error(err.message(lang), title=t(lang, "error.title"), print_exception=False)
    if isinstance(err, (ValueError, FileNotFoundError)):
        return gr.Error(t(lang, "error.invalid", detail=str(err)), title=t(lang, "error.title"), print_exception=False)
    log.exception("unexpected error in a handler")
    return gr.Error(t(lang, "error.internal", detail=f"{type(err).__name__}: {err}"), title=t(lang, "error.title"))


def _request_of(args: tuple, kwargs: dict) -> gr.Request | None:
    request = kwargs.get("request")
    if request is None:
        request = next((a for a in args if isinstance(a, gr.Request)), None)
    return request


def friendly(fn: Callable) -> Callable:
    """Turn any exception of a plain handler into a translated `gr.Error`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise as_gr_error(err, lang_of(_request_of(args, kwargs))) from err

    return wrapper


def friendly_stream(fn: Callable) -> Callable:
    """`friendly` for generator handlers (closing the wrapper closes the handler: its `finally` runs)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        inner = fn(*args, **kwargs)
        try:
            yield from inner
        except Exception as err:
            raise as_gr_error(err, lang_of(_request_of(args, kwargs))) from err
        finally:
            inner.close()

    return wrapper


def file_list(files: Any) -> list[Any]:
    """Uploaded files as a list (the API may send one file, none, or a list)."""
    if files is None:
        return []
    return list(files) if isinstance(files, (list, tuple)) else [files]


def file_path(file: Any) -> Path:
    """A Gradio file value (path string, or an object with `.name` / `path`) as a Path."""
    if isinstance(file, (str, Path)):
        return Path(file)
    if isinstance(file, dict) and "path" in file:
        return Path(file["path"])
    return Path(file.name)


def disabled_choice_css(elem_id: str, values: list[str]) -> str:
    """Grey out radio choices that cannot run here (the handler refuses them too, with the reason)."""
    return "".join(
        f'#{elem_id} label:has(input[value="{v}"]) {{ opacity: .45; pointer-events: none; }}\n' for v in values
    )


class Services:
    """The server's shared state, one per app: `settings` and the session registry serve every user."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions = SessionRegistry(settings, loader=functools.partial(models.load_checked, settings=settings))
        library.sweep(settings, force=True)  # anonymous saves unused for too long

    def session(self, request: gr.Request | None) -> Session:
        """The caller's session (by the page's session hash), made on first use."""
        return self.sessions.get(getattr(request, "session_hash", None))

    def owner(self, owner_key: Any, profile: Any, request: gr.Request | None) -> owners.Owner:
        """Who the caller is for saved models: the signed-in user, the owner of `owner_key`, or the session."""
        return owners.resolve(owner_key, profile, self.session(request).id)

    def model_choices(
        self, owner_key: str | None = None, request: gr.Request = None, profile: gr.OAuthProfile | None = None
    ) -> Any:
        """The saved models the caller may use (theirs, the server's, others' published ones), as a
        dropdown update with the first one picked."""
        try:
            saved = library.visible(self.settings, self.owner(owner_key, profile, request))
        except UserError:  # a malformed key sees nothing; the actions say why
            saved = []
        choices = [(m.label(lang_of(request)), m.name) for m in saved]
        return gr.update(choices=choices, value=choices[0][1] if choices else None)

    def reserve_disk(self, session: Session, need: int) -> Any:
        """`need` bytes of disk for the session's work while it runs (`storage.reserve`)."""
        return storage.reserve(session.folder, self.settings, need, session.kept_folders(), session.downloads)

    def admit(self, session: Session, job: str, memory: int, cpus: int) -> Any:
        """The server-wide admission of a heavy job (`webapp.capacity`); waiting ends if the session closes."""
        return self.sessions.capacity.admit(job, memory, cpus, cancelled=lambda: session.closed)

    def unload(self, request: gr.Request) -> None:
        """The page closed: stop its training and delete its session folders."""
        self.sessions.close(getattr(request, "session_hash", None))


class TabHandlers:
    """What each tab's handlers class starts from: the app's shared `services`, and its settings."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
