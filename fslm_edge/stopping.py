"""Stop strings over a text stream, never leaking a partial stop string."""

from __future__ import annotations


class StopMatcher:
    """Feed generated text in pieces; get back the text that is safe to emit.

    Text that could be the start of a stop string is held back until the next
    piece decides it. The stop string that completes first wins, so the result
    does not depend on how the text was cut into pieces. Once a stop string is complete, everything from its start
    on is dropped and :attr:`stopped` is true.
    """

    def __init__(self, stops: tuple[str, ...] | list[str]):
        self.stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        buffer = self._pending + text
        if not self.stops:
            self._pending = ""
            return buffer
        first = None  # the stop that completes first; on a tie, the one that starts first
        for stop in self.stops:
            at = buffer.find(stop)
            if at != -1:
                key = (at + len(stop), at)
                if first is None or key < first[0]:
                    first = (key, stop)
        if first is not None:
            self.stopped = True
            self.matched = first[1]
            self._pending = ""
            return buffer[: first[0][1]]
        keep = self._held_suffix(buffer)
        self._pending = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """End of generation: a held-back partial match is ordinary text."""
        text, self._pending = ("" if self.stopped else self._pending), ""
        return text

    def _held_suffix(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that starts a stop string."""
        best = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:length]):
                    best = length
                    break
        return best
