"""SIGINT/SIGTERM during training: stop at the next batch boundary and save, instead of dying."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

__all__ = ["StopRequest", "TrainingInterrupted", "deferred_signals"]

_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving what it had.

    Attributes:
        signum: The signal received.
        checkpoint: The checkpoint holding the progress (``None`` without an output folder).
        epochs_done: Completed epochs.
        batches_done: Batches of the next epoch already trained (0 at an epoch boundary).

    Example:
        >>> import signal
        >>> err = TrainingInterrupted(
        ...     "stopped", signum=signal.SIGTERM, checkpoint=None, epochs_done=2, batches_done=0
        ... )
        >>> err.signal_name, isinstance(err, KeyboardInterrupt), err.epochs_done
        ('SIGTERM', True, 2)
    """

    def __init__(
        self, message: str, *, signum: int, checkpoint: Path | None, epochs_done: int,
        batches_done: int,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.signum = signum
        self.checkpoint = checkpoint
        self.epochs_done = epochs_done
        self.batches_done = batches_done

    @property
    def signal_name(self) -> str:
        """``"SIGINT"`` or ``"SIGTERM"``."""
        return signal.Signals(self.signum).name


class StopRequest:
    """Set by the handlers of :func:`deferred_signals`; ``bool(request)`` asks to stop."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


@contextmanager
def deferred_signals() -> Iterator[StopRequest]:
    """While active, the first SIGINT/SIGTERM only sets the request; a second one interrupts.

    Outside the main thread (where handlers cannot be installed) nothing is deferred, and a signal
    the process ignores (``SIG_IGN``, e.g. SIGINT under ``nohup``) stays ignored. The previous
    handlers are restored on exit.

    Yields:
        The :class:`StopRequest` to poll between batches.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if request.signum is not None:  # the second signal: stop now, saving nothing more
            raise KeyboardInterrupt
        request.signum = signum

    previous = {
        sig: signal.signal(sig, handler)
        for sig in _SIGNALS
        # SIG_IGN stays ignored; None is a handler installed from C, which Python could not
        # put back afterwards, so such a signal is left alone too.
        if signal.getsignal(sig) not in (signal.SIG_IGN, None)
    }
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
