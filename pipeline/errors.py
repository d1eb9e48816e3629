"""The one exception type for mistakes a user can fix (bad params, bad files, missing data).

Stages and the CLI catch `UserError` and print its message as one line, without a traceback;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Callable


class UserError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""


def run_cli(main: Callable[[], object]) -> None:
    """Run a stage/CLI entry point: a `UserError` becomes `error: <message>` and exit code 1."""
    import sys

    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
