"""Stopping a run on SIGTERM / SIGINT: after the current step with a checkpoint, or at once.

No JAX import here: `azr-jax train` installs the handler before it imports JAX, whose import
takes long enough for a Ctrl-C to land in it (and be dropped in JAX's garbage-collection callback)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading

log = logging.getLogger("azr_jax.trainer")  # the trainer's messages, under the trainer's logger


def raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt():
    """For the commands without a trainer loop (score, pretrain): inside, SIGTERM (a scheduler,
    `timeout`) stops the work as Ctrl-C does, so its cleanup runs instead of the process ending
    mid-write. The previous handler is back afterwards (a caller of `cli.main` keeps its own)."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StopFlag:
    """Set by SIGTERM / SIGINT; the loop saves a checkpoint after the current step and exits.

    Until `stepping` is set (the start-up: loading, restoring) there is nothing to save, so a
    signal stops at once: the handler raises KeyboardInterrupt. Python drops an exception raised
    inside a garbage-collection callback (JAX has one), so the start-up also calls
    `check_startup` between its phases, which raises it again; and a second signal, which
    stops at once whatever the phase, also cancels the host jobs still queued."""

    def __init__(self, stepping: bool = True):
        self.requested = False
        self.stepping = stepping
        self.immediate = False  # a stop that does not wait for the step (start-up or second signal)
        self.after = "this step"  # what a first signal waits for, as the warning says it
        self._previous = {}
        self._unraisable = None

    def install(self) -> None:
        """Take over SIGTERM and SIGINT. Installing again (after a library replaced a handler)
        keeps the handlers found by the first install, which `restore` puts back."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)
        if self._unraisable is None:
            self._unraisable = sys.unraisablehook
            sys.unraisablehook = self._drop_dropped_stop

    def _drop_dropped_stop(self, unraisable) -> None:
        """Python reports the KeyboardInterrupt it dropped (raised in a garbage-collection
        callback) with a traceback; `check_startup` raises it again, so the report is noise."""
        if not (self.immediate and isinstance(unraisable.exc_value, KeyboardInterrupt)):
            self._unraisable(unraisable)

    def _handle(self, signum, frame) -> None:
        if not self.stepping:
            self.requested = self.immediate = True
            log.warning("received %s before the first step: stopping now", signal.Signals(signum).name)
            raise KeyboardInterrupt
        if self.requested:  # a second signal: do not wait for the step to finish
            self.immediate = True
            self.restore()
            log.warning("received %s again: stopping now, without a checkpoint", signal.Signals(signum).name)
            raise KeyboardInterrupt
        self.requested = True
        log.warning("received %s: stopping after %s (send it again to stop at once)",
                    signal.Signals(signum).name, self.after)

    def check_startup(self) -> None:
        """Raise the start-up stop again, in case the handler's exception was dropped."""
        if self.immediate:
            raise KeyboardInterrupt

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        if self._unraisable is not None and sys.unraisablehook == self._drop_dropped_stop:
            sys.unraisablehook = self._unraisable
        self._unraisable = None
