"""Cluster memories (multi-queue, centroid) and temperatures."""

from .base import ClusterMemory
from .centroid import CentroidMemory
from .multi_queue import MultiQueueMemory
from .temperature import FixedTemperature, LearnableTemperature

__all__ = ["ClusterMemory", "CentroidMemory", "MultiQueueMemory", "FixedTemperature", "LearnableTemperature"]
