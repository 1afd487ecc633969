"""Evaluation: ranking metrics (mAP, CMC), distances, k-reciprocal re-ranking, feature extraction and
pseudo-label quality."""

from mqreid.evaluation.extract import extract_features
from mqreid.evaluation.clustering import camera_statistics, pseudo_label_quality, same_camera_neighbours
from mqreid.evaluation.ranking import (METRICS, evaluate_features, evaluate_ranking, evaluate_rows,
                                       pairwise_distance, summarise_percent)
from mqreid.evaluation.rerank import ReRanker, re_ranking
from mqreid.evaluation.retrieval import evaluate_retrieval

__all__ = ["METRICS", "ReRanker", "camera_statistics", "evaluate_features", "evaluate_ranking", "evaluate_retrieval",
           "evaluate_rows", "extract_features", "pairwise_distance", "pseudo_label_quality", "re_ranking",
           "same_camera_neighbours", "summarise_percent"]
