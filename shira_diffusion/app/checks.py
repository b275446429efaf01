"""What every event checks before it touches a file, and what its messages may say.

A visitor names bases and styles, never files: a base must be one the page offers
(``AppService.base_choices``), a style a catalogue name; neither text ever resolves to a path on
the server, so a missing path and ``/etc/passwd`` get the same refusal. Numbers and texts are
checked as the CLI checks them (NaN, None, huge numbers: one line). Every event function goes
through ``user_errors``: the visitor always gets one line, never a traceback or an empty error,
and no message names a folder of the server.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import numbers
import re
from pathlib import Path

import gradio as gr
from gradio.exceptions import InvalidPathError
from pydantic import ValidationError

from ..catalog import MIX_VARIANT, StyleCatalog, check_style_name
from ..errors import ShiraError

logger = logging.getLogger(__name__)
MAX_MESSAGE = 600  # characters of one message
SHOWN_CHARS = 60  # of a visitor's value quoted back in a message
MAX_TEXT = 500  # prompts, captions, descriptions (as the prompt's limit)
_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"`]+/)+([^\s/'\"`]*)")  # an absolute POSIX path


# ---------------------------------------------------------------------------- messages
def scrub(text: str) -> str:
    """``text`` with every absolute path cut to its last part: messages name files, not folders."""
    return _PATH.sub(lambda match: match.group(1) or "(a folder)", str(text))


def _line(text: str) -> str:
    """A message as the visitor sees it: scrubbed, and short (Gradio's own echo a whole value)."""
    text = scrub(text)
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "..."


def shown(value) -> str:
    """A visitor's value, quoted and cut short, for a message."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "...")


@contextlib.contextmanager
def _as_messages():
    try:
        yield
    except gr.Error as exc:  # raised by the function itself: the same message, scrubbed
        raise gr.Error(_line(exc.message), print_exception=False) from None
    except ShiraError as exc:  # anything the visitor can fix
        raise gr.Error(_line(str(exc)), print_exception=False) from None
    except Exception as exc:  # a bug or the server's own trouble: logged here, one line there
        logger.exception("app event failed")
        raise gr.Error(f"internal error ({type(exc).__name__}); the app keeps serving, and the server's log has "
                       "the details", print_exception=False) from None


def user_errors(function):
    """Every exception of an event function -> one ``gr.Error`` line without server paths
    (generator functions too: a streamed event keeps streaming)."""
    if inspect.isgeneratorfunction(function):
        @functools.wraps(function)
        def streamed(*args, **kwargs):
            with _as_messages():
                yield from function(*args, **kwargs)
        return streamed

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with _as_messages():
            return function(*args, **kwargs)
    return wrapper


# ---------------------------------------------------------------------------- who asks
def session_of(request: gr.Request | None) -> str:
    """The visitor's session (one page load, or one API client); "" in-process (tests, scripts)."""
    return str(getattr(request, "session_hash", None) or "") if request is not None else ""


# ---------------------------------------------------------------------------- bases and styles
def check_base(choices: list[str], value, default: str) -> str:
    """One of the offered bases (an empty value: ``default``); never a path of the server's choosing
    by the visitor."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if not isinstance(value, str) or value.strip() not in choices:
        raise ShiraError(f"base {shown(value)} is not offered here; choose one of: {', '.join(choices)}")
    return value.strip()


def check_style(catalog: StyleCatalog, value) -> str:
    """A catalogue style's name (never a file)."""
    name = value.strip() if isinstance(value, str) else value
    try:
        check_style_name(name)
    except ShiraError:
        name = None
    if name is None or name not in catalog:
        raise ShiraError(f"no style {shown(value)} (styles: {', '.join(catalog.names()) or 'none yet'})")
    return name


def style_list(value, limit: int) -> list[str]:
    """A list of style names as the page sends it (None: none)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ShiraError(f"styles must be a list of style names, got {shown(value)}")
    if len(value) > limit:
        raise ShiraError(f"{len(value)} styles chosen: mix at most {limit}")
    return list(value)


def style_files(catalog: StyleCatalog, names: list[str], base_label: str) -> list[Path]:
    """The adapter files a mix of catalogue ``names`` fuses on a base (as ``StyleCatalog.resolve_mix``
    for names: with two or more, each style's slot adapter where it has one), never a path."""
    files = []
    for name in names:
        record = catalog.get(check_style(catalog, name))
        if len(names) > 1 and record.has_adapter(base_label, MIX_VARIANT):
            files.append(record.adapter_path(base_label, MIX_VARIANT))
        elif record.has_adapter(base_label):
            files.append(record.adapter_path(base_label))
        else:
            have = ", ".join(record.bases()) or "none"
            raise ShiraError(f"style {name!r} has no adapter for base {base_label!r} (bases it has: {have})")
    return files


# ---------------------------------------------------------------------------- numbers and texts
def number(value, what: str, low: float, high: float) -> float:
    """A finite number in [low, high] (not None, NaN, infinity, a string or a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ShiraError(f"{what}: a number from {low:g} to {high:g}, got {shown(value)}")
    if not low <= value <= high:
        raise ShiraError(f"{what} {value:g} is outside [{low:g}, {high:g}]")
    return float(value)


def whole(value, what: str, low: int, high: int) -> int:
    """A whole number in [low, high] (2.0 is 2; 2.5, NaN, None and huge numbers are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value != int(value):
        raise ShiraError(f"{what}: a whole number from {low} to {high}, got {shown(value)}")
    if not low <= int(value) <= high:
        raise ShiraError(f"{what} {int(value)} is outside [{low}, {high}]")
    return int(value)


def checked_text(value, what: str, limit: int = MAX_TEXT) -> str:
    """A text field's value (None: empty), at most ``limit`` characters."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ShiraError(f"{what} must be text, got {shown(value)}")
    if len(value) > limit:
        raise ShiraError(f"{what} is over {limit} characters")
    return value


def flag(value, what: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    raise ShiraError(f"{what} must be true or false, got {shown(value)}")


# ---------------------------------------------------------------------------- components
def _raw_number(component, payload, required: bool):
    """Gradio turns NaN into a bare ValueError and a string into a TypeError (an empty error on the
    page): refuse them here, with the field's name."""
    what = component.label or "a number"
    if payload is None and not required:
        return None
    if isinstance(payload, bool) or not isinstance(payload, numbers.Real) or not math.isfinite(payload):
        raise gr.Error(f"{what}: a number, got {shown(payload)}", print_exception=False)
    return payload


def finite(component, required: bool | None = None):
    """``component`` (a ``gr.Number`` or ``gr.Slider``) refusing None (a slider), NaN, infinity and
    non-numbers with a message before Gradio's own conversion. The instance's ``preprocess`` is
    wrapped, not the class subclassed: Gradio writes a ``.pyi`` beside every component class."""
    required = isinstance(component, gr.Slider) if required is None else required
    original = component.preprocess

    def preprocess(payload):
        return original(_raw_number(component, payload, required))

    component.preprocess = preprocess
    return component


# ---------------------------------------------------------------------------- Gradio's own checks
def _refusal(exc: Exception) -> str:
    """One line for a request Gradio's own checks refused (they raise bare exceptions: an empty
    error for the visitor, or a message naming the server's folders)."""
    if isinstance(exc, InvalidPathError):
        return "a file field takes a file uploaded to this page, never a path on the server"
    if isinstance(exc, ValidationError):
        return "a value sent does not have its field's type (a file field takes an uploaded file)"
    return f"a value sent does not fit its field ({type(exc).__name__})"


def guard_processing(demo: gr.Blocks) -> gr.Blocks:
    """Route Gradio's checks of every request's values (file fields, types) and of every reply
    through one-line messages, as ``user_errors`` does for the event functions."""
    preprocess, postprocess = demo.preprocess_data, demo.postprocess_data

    async def preprocess_data(block_fn, inputs, state, explicit_call=False):
        try:
            return await preprocess(block_fn, inputs, state, explicit_call)
        except gr.Error as exc:
            raise gr.Error(_line(exc.message), print_exception=False) from None
        except Exception as exc:
            raise gr.Error(_refusal(exc), print_exception=False) from None

    async def postprocess_data(block_fn, predictions, state):
        try:
            return await postprocess(block_fn, predictions, state)
        except gr.Error as exc:
            raise gr.Error(_line(exc.message), print_exception=False) from None
        except Exception as exc:
            logger.exception("a reply could not be sent")
            raise gr.Error(f"internal error ({type(exc).__name__}) in the reply; the app keeps serving",
                           print_exception=False) from None

    demo.preprocess_data, demo.postprocess_data = preprocess_data, postprocess_data
    return demo
