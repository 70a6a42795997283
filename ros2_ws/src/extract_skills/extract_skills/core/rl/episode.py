"""Episode bookkeeping of the supervisor: which subtasks of the task are done, sparse reward, outcome."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping, Sequence


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    TRUNCATED = "truncated"


@dataclass
class EpisodeTracker:
    """Sparse reward: +1 the first time each subtask of ``task`` is seen complete (any order)."""

    task: Sequence[str]
    completed: list[str] = field(default_factory=list)
    skills: int = 0

    def __post_init__(self) -> None:
        if len(set(self.task)) != len(self.task):
            raise ValueError(f"task lists a subtask twice: {list(self.task)}")

    def update(self, done: Mapping[str, bool]) -> list[str]:
        """Feed detector flags; returns the subtasks newly completed (each rewarded once)."""
        new = [n for n in self.task if done.get(n, False) and n not in self.completed]
        self.completed.extend(new)
        return new

    @property
    def remaining(self) -> list[str]:
        return [n for n in self.task if n not in self.completed]

    @property
    def episode_return(self) -> float:
        return float(len(self.completed))

    @property
    def all_done(self) -> bool:
        return bool(self.task) and not self.remaining
