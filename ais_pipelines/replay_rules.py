"""``policies/replay.yaml``: the scripted human actions of a walk-forward replay (issue 12).

Validated by pydantic on load, errors naming file, key and value (``config.load_policy_file``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ais_pipelines.config import load_policy_file

REPLAY_FILE = "replay.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReviewRule(_Strict):
    rule: Literal["reject_all", "approve_all", "approve_if_confidence"] = "reject_all"
    min_confidence: float = Field(default=0.6, ge=0, le=1)
    actor: str = "risk.officer"

    def decide(self, confidence: float | None) -> str:
        """APPROVE or REJECT for one queued item."""
        if self.rule == "approve_all":
            return "APPROVE"
        if self.rule == "approve_if_confidence":
            return "APPROVE" if confidence is not None and confidence >= self.min_confidence else "REJECT"
        return "REJECT"

    def describe(self) -> str:
        return f"{self.rule}" + (f" (confidence >= {self.min_confidence})" if self.rule == "approve_if_confidence"
                                 else "")


class KillSwitchRule(_Strict):
    resume_after_sessions: int = Field(default=0, ge=0)
    resume_to: Literal["ACTIVE", "REDUCING"] = "REDUCING"
    actor: str = "risk.officer"


class RefitRule(_Strict):
    initial: bool = True


class ReplayRules(_Strict):
    review: ReviewRule = ReviewRule()
    kill_switch: KillSwitchRule = KillSwitchRule()
    refit: RefitRule = RefitRule()


def load_replay_rules(policy_dir: Path) -> ReplayRules:
    """The directory's ``replay.yaml``; absent → the defaults (reject every review, never resume)."""
    path = Path(policy_dir) / REPLAY_FILE
    return load_policy_file(path, ReplayRules) if path.exists() else ReplayRules()
