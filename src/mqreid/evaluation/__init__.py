"""Evaluation: ranking metrics (mAP, CMC), pairwise distances and feature extraction."""

from mqreid.evaluation.extract import extract_features
from mqreid.evaluation.ranking import METRICS, evaluate_features, evaluate_ranking, pairwise_distance

__all__ = ["METRICS", "evaluate_features", "evaluate_ranking", "extract_features", "pairwise_distance"]
