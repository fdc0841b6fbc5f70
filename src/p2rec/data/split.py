"""Leave-one-out split (METHOD.md section 1).

For every user: the last item is the test target, the second to last the validation target, the rest is
training. Validation predicts from the training prefix; test predicts from training + validation.
Training stages only ever see :attr:`LeaveOneOut.train`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from p2rec.data.sequences import SequenceData


@dataclass
class LeaveOneOut:
    users: np.ndarray
    train: list[np.ndarray]
    valid_target: np.ndarray
    test_target: np.ndarray
    num_items: int

    def inputs(self, stage: str) -> list[np.ndarray]:
        """Input sequences for evaluating ``stage`` ('valid' or 'test')."""
        if stage == "valid":
            return self.train
        if stage == "test":
            return [np.append(t, v) for t, v in zip(self.train, self.valid_target)]
        raise ValueError(f"unknown stage {stage!r}")

    def targets(self, stage: str) -> np.ndarray:
        return {"valid": self.valid_target, "test": self.test_target}[stage]


def leave_one_out(data: SequenceData) -> LeaveOneOut:
    return LeaveOneOut(
        users=data.users.copy(),
        train=[s[:-2].copy() for s in data.sequences],
        valid_target=np.array([s[-2] for s in data.sequences], dtype=np.int64),
        test_target=np.array([s[-1] for s in data.sequences], dtype=np.int64),
        num_items=data.num_items,
    )
