"""What one ``log_batch`` may hold (MLflow's limits), and the entries gathered for the next one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

MAX_PARAMS_OR_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000


class Pending:
    """Entries gathered for the next ``log_batch``, and what was refused while gathering them."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.metrics: list[Any] = []
        self.params: list[Any] = []
        self.tags: list[Any] = []
        self.new_params: dict[str, str] = {}
        self.rejected: Counter[str] = Counter()

    def has_room(self, entries: int) -> bool:
        """Whether ``entries`` more params (or tags, or metrics) still fit one ``log_batch``."""
        return (
            len(self.metrics) + len(self.params) + len(self.tags) + entries <= MAX_ENTITIES_PER_BATCH
            and max(len(self.params), len(self.tags)) + entries <= MAX_PARAMS_OR_TAGS_PER_BATCH
        )

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1


def chunks(metrics: list[Any], params: list[Any], tags: list[Any]) -> Iterator[tuple[list, list, list]]:
    """Split into batches of at most 100 params, 100 tags and 1000 entities in all."""
    while params or tags:
        p, params = params[:MAX_PARAMS_OR_TAGS_PER_BATCH], params[MAX_PARAMS_OR_TAGS_PER_BATCH:]
        t, tags = tags[:MAX_PARAMS_OR_TAGS_PER_BATCH], tags[MAX_PARAMS_OR_TAGS_PER_BATCH:]
        room = MAX_ENTITIES_PER_BATCH - len(p) - len(t)
        m, metrics = metrics[:room], metrics[room:]
        yield m, p, t
    while metrics:
        m, metrics = metrics[:MAX_ENTITIES_PER_BATCH], metrics[MAX_ENTITIES_PER_BATCH:]
        yield m, [], []
