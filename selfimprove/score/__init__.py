"""Scoring without labels: answer extraction, majority vote, rewards (TRL call shape), judges,
implicit process rewards and diagnostics. Torch is imported only by the model-backed parts."""

from selfimprove.gold import GOLD_FIELDS
from selfimprove.score.extract import EXTRACTORS, answers_equal, get_extractor, normalize_answer
from selfimprove.score.rewards import REWARDS, combine_rewards, get_reward
from selfimprove.score.vote import Vote, majority_vote, pseudo_labels, vote_then_subsample

__all__ = [
    "EXTRACTORS",
    "GOLD_FIELDS",
    "REWARDS",
    "Vote",
    "answers_equal",
    "combine_rewards",
    "get_extractor",
    "get_reward",
    "majority_vote",
    "normalize_answer",
    "pseudo_labels",
    "vote_then_subsample",
]
