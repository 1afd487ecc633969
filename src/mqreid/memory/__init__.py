"""Cluster memories (multi-queue, centroid), temperatures, and camera-aware proxies."""

from .base import ClusterMemory, cross_entropy
from .camera_proxy import CameraProxies, camera_proxy_losses
from .centroid import CentroidMemory
from .multi_queue import MultiQueueMemory
from .temperature import FixedTemperature, LearnableTemperature

__all__ = ["CameraProxies", "ClusterMemory", "camera_proxy_losses", "cross_entropy", "CentroidMemory", "MultiQueueMemory", "FixedTemperature", "LearnableTemperature"]
