"""Progress for long work: a tqdm bar (rate, ETA) on a terminal, plain periodic lines in a log.

    with Progress(total=len(windows), desc="yarn @ 16384", unit="tok") as bar:
        for batch in batches:
            ...
            bar.update(tokens_in_batch)

tqdm's bar redraws one line with carriage returns, which a log file or CI output turns into one
unreadable line; off a terminal the same object prints a complete line every ``every`` seconds
(and one at the end) instead.
"""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def _amount(value: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.1f}" if value != int(value) else f"{int(value)}"


class Progress:
    """A progress bar over ``total`` units of work (None: unknown)."""

    def __init__(self, total: float | None, desc: str, unit: str = "it", *, every: float = 10.0, disable: bool = False,
                 file=None):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.file = file or sys.stderr
        self.disable = disable
        self.n = 0
        self._printed = 0  # n when the last plain line was printed
        self.postfix = ""
        self.start = self._last = time.perf_counter()
        self._bar = None
        if not disable and self.file.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True, file=self.file,
                             mininterval=0.5)

    def update(self, n: float = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif not self.disable and time.perf_counter() - self._last >= self.every:
            self._print()

    def set_postfix(self, text: str) -> None:
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def write(self, text: str) -> None:
        """A line of output that does not break the bar."""
        if self.disable:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.file)
        else:
            print(text, file=self.file, flush=True)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {_amount(self.n)}"
        if self.total:
            text += f"/{_amount(self.total)} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        # slow units (passkey trials at 16k: ~50 s each) read better as seconds per unit
        speed = f"{_amount(rate)} {self.unit}/s" if rate >= 1 or not self.n else f"{1 / rate:.1f} s/{self.unit}"
        text += f", {speed}, elapsed {_duration(elapsed)}"
        if self.total and rate > 0 and self.n < self.total:
            text += f", ETA {_duration((self.total - self.n) / rate)}"
        return text + (f", {self.postfix}" if self.postfix else "")

    def _print(self) -> None:
        self._last, self._printed = time.perf_counter(), self.n
        print(self.line(), file=self.file, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif not self.disable and self.n != self._printed:
            self._print()
        self.disable = True

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
