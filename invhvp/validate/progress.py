"""Progress over every phase of a validation run, with an ETA weighted by each item's expected cost.

The bar advances by the expected seconds of each finished item (:mod:`.plan`), not by one per
item: a 1 ms DataInf solve and a 100 s CG run weigh what they cost.  The expected costs are
recalibrated on the fly: after an item finishes, its kind's correction factor becomes
(measured seconds) / (expected seconds) summed over the finished items of that kind (methods
are calibrated per method, so the rank-8 CG is predicted from the ranks before it); kinds not yet
seen use the factor of everything finished so far.
"""

from __future__ import annotations

import threading
import time

__all__ = ["Progress", "format_seconds"]


def format_seconds(s: float) -> str:
    """``"42 s"``, ``"3 min 05 s"``, ``"1 h 12 min"``.

    Examples
    --------
    >>> format_seconds(42.4), format_seconds(185), format_seconds(4320)
    ('42 s', '3 min 05 s', '1 h 12 min')
    """
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


class Progress:
    """Cost-weighted progress over a list of :class:`~invhvp.validate.plan.Item`.

    Parameters
    ----------
    items : list of Item
    bars : bool
        Draw a tqdm bar on stderr (refreshed every ``refresh`` seconds, so the ETA counts down
        during long items); otherwise ``say`` gets one line when each phase starts and after
        every item longer than ``refresh``.
    say : callable
        Receives text lines.
    refresh : float
    clock : callable
        Returns seconds (tests pass a fake clock).
    before_item : callable, optional
        Called before each item; its return value (the threads in force) is recorded.
    """

    def __init__(
        self, items, *, bars=True, say=print, refresh: float = 2.0, clock=time.perf_counter, before_item=None
    ):
        self.items = {it.key: it for it in items}
        if len(self.items) != len(items):
            raise ValueError("items: keys must be unique")
        self.order = [it.key for it in items]
        self.say, self.clock, self.refresh = say, clock, refresh
        self.done: dict = {}  # key -> measured seconds
        self.threads: dict = {}  # key -> what before_item returned
        self.before_item = before_item
        self.current = None
        self._last = None  # the label shown between two items
        self._t_item = None
        self._phase = None
        self.t0 = clock()
        self.total = sum(it.cost for it in items)
        self._bar = None
        self._stop = threading.Event()
        self._thread = None
        if bars:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total,
                bar_format="{percentage:3.0f}%|{bar}| {desc}",
                desc="validate",
                leave=False,
                smoothing=0,
            )
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()

    # ----------------------------------------------------------------- calibration
    def factor(self, kind: str) -> float:
        """Measured / expected seconds over the finished items of ``kind`` (else over all finished items)."""

        def ratio(keys):
            exp = sum(self.items[k].cost for k in keys)
            return sum(self.done[k] for k in keys) / exp if exp > 0 else None

        own = [k for k in self.done if self.items[k].kind == kind]
        f = ratio(own) if own else None
        if f is None:
            f = ratio(list(self.done)) if self.done else None
        return 1.0 if f is None else max(f, 1e-3)

    def remaining(self) -> float:
        """Calibrated seconds left: unfinished items, the running one less its elapsed time."""
        left = 0.0
        for k in self.order:
            if k in self.done:
                continue
            it = self.items[k]
            est = it.cost * self.factor(it.kind)
            if k == self.current and self._t_item is not None:
                est = max(est - (self.clock() - self._t_item), 0.1 * est)
            left += est
        return left

    def elapsed(self) -> float:
        """Seconds since the progress started."""
        return self.clock() - self.t0

    def status_text(self) -> str:
        """The current (or last) item, the elapsed time and the calibrated ETA, for the bar."""
        key = self.current if self.current is not None else self._last
        label = self.items[key].label if key is not None else "starting"
        return f"{label} | {format_seconds(self.elapsed())} elapsed, ETA {format_seconds(self.remaining())}"

    # ----------------------------------------------------------------- running items
    def run(self, key, fn, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` as item ``key``; record its time; return its result."""
        it = self.items[key]
        if it.phase != self._phase:
            self._phase = it.phase
            if self._bar is None:
                self.say(f"[{self.percent():3.0f}%] {it.phase}: {self.status_text_for(key)}")
        if self.before_item is not None:
            self.threads[key] = self.before_item()
        self.current, self._t_item = key, self.clock()
        if self._bar is not None:
            self._bar.set_description_str(self.status_text(), refresh=True)
        try:
            return fn(*args, **kwargs)
        finally:
            dt = self.clock() - self._t_item
            self.done[key] = dt
            self.current, self._t_item, self._last = None, None, key
            if self._bar is not None:
                self._bar.update(it.cost)
                self._bar.set_description_str(self.status_text(), refresh=True)
            elif dt > self.refresh:
                self.say(
                    f"[{self.percent():3.0f}%] {it.label}: {dt:.1f} s; ETA {format_seconds(self.remaining())}"
                )

    def skip(self, key):
        """Mark ``key`` as not run (it no longer counts in the ETA)."""
        if key in self.items and key not in self.done:
            cost = self.items[key].cost
            self.done[key] = 0.0
            self.items[key] = _zero(self.items[key])
            if self._bar is not None:
                self._bar.total = max(self._bar.total - cost, self._bar.n)
                self._bar.refresh()

    def status_text_for(self, key) -> str:
        """``key``'s label with the elapsed time and the ETA, for the line printed without a bar."""
        return f"{self.items[key].label} (elapsed {format_seconds(self.elapsed())}, ETA {format_seconds(self.remaining())})"

    def percent(self) -> float:
        """Expected cost of the finished items, in percent of the total."""
        total = sum(self.items[k].cost for k in self.order)
        done = sum(self.items[k].cost for k in self.done)
        return 100.0 * done / total if total > 0 else 100.0

    def records(self) -> list[dict]:
        """One row per item: phase, label, expected and measured seconds (``timings.csv``)."""
        return [
            {
                "phase": self.items[k].phase,
                "item": self.items[k].label,
                "expected_seconds": self.items[k].cost,
                "seconds": self.done.get(k, float("nan")),
                "threads": self.threads.get(k, ""),
            }
            for k in self.order
        ]

    def close(self):
        """Stop the refresh thread and close the bar."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._bar is not None:
            self._bar.close()

    def _tick(self):
        while not self._stop.wait(self.refresh):
            try:
                self._bar.set_description_str(self.status_text(), refresh=True)
            except Exception:  # noqa: BLE001 - a display refresh must never break the run
                pass


def _zero(it):
    from dataclasses import replace

    return replace(it, cost=0.0)
