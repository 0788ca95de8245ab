"""A stand-in for a slow accelerator in the read-back tests (private to the tests)."""

from __future__ import annotations

from fmlib._readback import HostCopy


class SlowCopy(HostCopy):
    """A HostCopy that arrives only when the next one is started: a device running one check interval behind
    the host, as a GPU may. On the CPU every real HostCopy has arrived at once."""

    __slots__ = ("serial",)
    started = 0

    def __init__(self, x):
        super().__init__(x)
        SlowCopy.started += 1
        self.serial = SlowCopy.started

    def ready(self) -> bool:
        return SlowCopy.started > self.serial
