"""How every command reports what went wrong: one `error: ...` line on stderr and an exit code, never a traceback.

Messages are printed as text, never as rich markup: they quote YAML paths (`grid.depth[1]`), URIs and the user's own
input, which rich would otherwise read as style tags (and drop or mangle).
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.text import Text

# Bad input: a sweep file, a sweep id, an option. Nothing was started.
USAGE_ERROR = 2
# The command could not do its job: a service did not start or is unhealthy, a check found problems, a sweep failed.
FAILED = 1


def out() -> Console:
    # Built per call, so the terminal width (or COLUMNS) of this invocation applies.
    return Console()


def err() -> Console:
    return Console(stderr=True)


def fail(message: str, code: int = USAGE_ERROR) -> typer.Exit:
    """Print `error: message` on stderr; returns the exit to raise (`raise fail(...) from None`)."""
    err().print(Text("error: ", style="red") + Text(message), highlight=False, soft_wrap=True)
    return typer.Exit(code)


def warn(message: str) -> None:
    """Print `warning: message` on stderr; the command goes on."""
    err().print(Text("warning: ", style="yellow") + Text(message), highlight=False, soft_wrap=True)
