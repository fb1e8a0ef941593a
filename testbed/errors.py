"""The errors the CLI turns into exit codes: bad input is exit 2, one line, no traceback."""

from __future__ import annotations

import difflib
import re


class BadInput(Exception):
    """Something the user gave us is wrong: a file, a key, a value, a path (exit code 2).
    ``file``: the file or folder it is about, where known; the dotted key is read off the message."""

    def __init__(self, message: str, *, file: str | None = None):
        super().__init__(message)
        self.file = file

    def document(self) -> dict:
        """What `--json` prints for it: {"error": the line, "file": ..., "key": ...}."""
        message = printable(" ".join(str(self).split("\n")))
        rest = message[len(self.file) + 2 :] if self.file and message.startswith(f"{self.file}: ") else message
        rest = re.sub(r"^variant '[^']*': ", "", rest)
        match = KEY_AT_START.match(rest)
        return {"error": message, "file": self.file, "key": match.group(1) if match else None}


# a dotted key (model.normalization.k, augment.train[1]) or an option (--workers) at the start of a message
KEY_AT_START = re.compile(r"^((?:--)?[A-Za-z_][\w\-]*(?:\[\d+\])?(?:\.[A-Za-z_][\w\-]*(?:\[\d+\])?)*)(?: = |: )")


class PluginFailure(Exception):
    """A component raised while being built or run outside a job (exit code 1, one line)."""


class ComponentError(BadInput):
    """A component refused its parameters (raised by factories; reported with the dotted key)."""


def printable(text: str) -> str:
    """`text` with every character a terminal would act on (control characters, line and paragraph
    separators, bidirectional overrides) written as its escape, so that an error quoting a user's
    key or value stays one harmless line."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'relu'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def choices_text(choices) -> str:
    return ", ".join(sorted(str(c) for c in choices)) or "none registered"


def short_repr(value, limit: int = 60) -> str:
    """repr(value) cut to `limit` characters, so one bad value cannot swamp the error line."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # nested too deeply; an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
