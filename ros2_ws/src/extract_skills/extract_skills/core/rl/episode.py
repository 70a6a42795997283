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


def format_summary(summary: Sequence[Mapping]) -> str:
    """The run's episodes as a table (the supervisor's summary entries), with the mean return of counted ones."""
    lines = ["episode | outcome   | return | skills | seconds | completed"]
    for s in summary:
        lines.append(f"{s['episode']:7d} | {s['outcome']:9s} | {s['return']:6.1f} | {s['skills']:6d} | "
                     f"{s['seconds']:7.1f} | {', '.join(s['completed']) or '-'}"
                     + ("" if s.get("counted", True) else " (not counted)"))
    counted = [s["return"] for s in summary if s.get("counted", True)]
    if counted:
        lines.append(f"mean return over {len(counted)} counted episode(s): {sum(counted) / len(counted):.2f}")
    return "\n".join(lines)
