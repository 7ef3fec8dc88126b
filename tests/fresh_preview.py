"""`pulumi preview` of a stack that has no state yet, under the project's mocks.

`tests.pulumi_harness.run_program(preview=True)` still gets an id and outputs back for every
resource (the mocks hand them out), so nothing is unknown. On a fresh stack the engine knows no
id and no output before `up`: here every resource answers with an empty id and only its inputs,
which the SDK turns into unknowns, as `pulumi preview` shows them.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

from tests.pulumi_harness import Program, RecordingMocks, run_program

_record = RecordingMocks.new_resource


def _fresh(self: RecordingMocks, args):
    _record(self, args)  # recorded as usual, inputs and all
    return "", dict(args.inputs)


def run_fresh_preview(config: dict[str, Any] | None = None) -> Program:
    with mock.patch.object(RecordingMocks, "new_resource", _fresh):
        return run_program(config or {}, preview=True)
