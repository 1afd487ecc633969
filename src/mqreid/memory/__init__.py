"""Cluster memories (multi-queue, centroid) and temperatures."""

from .base import ClusterMemory, cross_entropy
from .centroid import CentroidMemory
from .multi_queue import MultiQueueMemory
from .temperature import FixedTemperature, LearnableTemperature

__all__ = ["ClusterMemory", "cross_entropy", "CentroidMemory", "MultiQueueMemory", "FixedTemperature", "LearnableTemperature"]
