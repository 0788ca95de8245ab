"""Reading values back from a device without a host synchronisation (private).

A training loop on a GPU must not wait for the device in its steady state: ``loss.item()``, ``bool(t)`` or a
blocking copy to the host stops the CPU until every queued kernel has run, so the next step's kernels are not
queued in the meantime. :class:`HostCopy` starts a copy to the host that does not block (into page-locked
memory, with an event recorded behind it on the current stream) and says later, without waiting, whether it
has arrived. The trainer and the loss's deferred finiteness check read their losses this way: a check reads
the copy it started one interval earlier, which has long arrived, so no step waits for the device.

On the CPU (and on devices other than CUDA) the copy is made at once and is always ready: there is no
device to wait for on a CPU; on MPS the copy waits, as a read-back does.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

_THIS_FILE = __file__.replace("\\", "/")


class HostCopy:
    """The values of a tensor, copied to the host without blocking (on CUDA) and read once they have arrived.

    ``HostCopy(x)`` starts the copy of ``x`` (any shape; detached); :meth:`ready` is True once it has arrived
    (on CUDA: the event recorded after the copy has completed, asked with ``Event.query``, which never
    waits); :meth:`tolist` returns the values as Python numbers, waiting for the copy only if it has not
    arrived yet (a host synchronisation only then: call it after :meth:`ready` said True, or at the end of a
    run). Later writes to ``x`` on the device do not change the copy.
    """

    __slots__ = ("host", "event")
    waits = 0
    """How many :meth:`tolist` calls in this process had to wait for their copy (host syncs)."""

    def __init__(self, x: Tensor) -> None:
        x = x.detach()
        self.event = None
        if x.device.type == "cuda":
            self.host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
            self.host.copy_(x, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(x.device))
        else:
            self.host = x.to("cpu", copy=True)

    def ready(self) -> bool:
        """Whether the copy has arrived (never waits)."""
        return self.event is None or self.event.query()

    def tolist(self) -> list:
        """The copied values as (nested) Python numbers; waits for the copy if it has not arrived (counted as
        a read-back by :class:`ReadbackCounter`)."""
        if not self.ready():
            HostCopy.waits += 1
            if self.event is not None:
                self.event.synchronize()
        self.event = None
        return self.host.tolist()


_READBACKS = frozenset({"__bool__", "item", "tolist", "__float__", "__int__", "__index__", "nonzero", "cpu",
                        "numpy"})


class ReadbackCounter(TorchFunctionMode):
    """``with ReadbackCounter() as c:`` counts in ``c.count`` the calls that read a tensor's value back to Python
    (``bool``, ``item``, ``tolist``, ``float``, ``int``, ``nonzero``, ``cpu``, ``numpy``): on an accelerator
    each is a host synchronisation, so on a CPU this count stands in for the host syncs a GPU would make.

    Two kinds of reads are not counted, because they are no host sync on any device: torch.optim's reads of
    its step counters (kept on the host) and :class:`HostCopy`'s reads of copies that have arrived. A
    :meth:`HostCopy.tolist` before :meth:`HostCopy.ready` said True (a wait for the device) is counted.
    Used by the tests and ``benchmarks/train_steps.py``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self._waits = 0

    @property
    def count(self) -> int:
        """Read-backs so far in the block: counted reads plus :class:`HostCopy` waits."""
        return self.reads + HostCopy.waits - self._waits

    def __enter__(self) -> ReadbackCounter:
        self._waits = HostCopy.waits
        return super().__enter__()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in _READBACKS:
            frame = sys._getframe(1)
            callers = []
            while frame is not None and len(callers) < 4:
                callers.append(frame.f_code.co_filename.replace("\\", "/"))
                frame = frame.f_back
            if not any("torch/optim/" in name or name == _THIS_FILE for name in callers):
                self.reads += 1
        return func(*args, **(kwargs or {}))
