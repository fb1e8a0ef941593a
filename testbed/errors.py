"""The errors the CLI turns into exit codes: bad input is exit 2, one line, no traceback."""

from __future__ import annotations

import difflib


class BadInput(Exception):
    """Something the user gave us is wrong: a file, a key, a value, a path (exit code 2)."""


class ComponentError(BadInput):
    """A component refused its parameters (raised by factories; reported with the dotted key)."""


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'relu'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def choices_text(choices) -> str:
    return ", ".join(sorted(str(c) for c in choices)) or "none registered"
