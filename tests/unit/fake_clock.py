"""A clock the retry loops take instead of time.time / time.sleep: sleeping advances it, and the sleeps are kept."""
from __future__ import annotations


class Clock:
    def __init__(self):
        self.t, self.sleeps = 0.0, []

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.sleeps.append(s)
        self.t += s
