"""Run the edgeser CLI and kill the process (os._exit, no clean-up) just before its N-th rename.

    EDGESER_FAULT_AT=N python tests/fault_driver.py export --model ...

Every way edgeser moves a file or folder into place goes through `os.replace`, `os.rename` or
`edgeser.files._exchange`; killing before call N leaves exactly the state a kill -9 between renames N-1 and N
leaves. Exits 137 when the fault fired, else with the CLI's own status.
"""

from __future__ import annotations

import os
import sys

AT = int(os.environ["EDGESER_FAULT_AT"])
calls = 0


def _maybe_die() -> None:
    global calls
    calls += 1
    if calls == AT:
        os._exit(137)


def _wrap(function):  # type: ignore[no-untyped-def]
    def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
        _maybe_die()
        return function(*args, **kwargs)

    return wrapped


os.replace = _wrap(os.replace)
os.rename = _wrap(os.rename)

import edgeser.files  # noqa: E402

edgeser.files._exchange = _wrap(edgeser.files._exchange)

from edgeser.cli import main  # noqa: E402

main(sys.argv[1:], prog_name="edgeser")
