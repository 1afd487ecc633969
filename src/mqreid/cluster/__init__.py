"""Clustering of L2-normalised features into pseudo identities (labels 0..C-1, -1 = outlier).

- :func:`knn_search`: exact inner-product kNN (faiss, or blocked GEMM + top-k).
- :func:`jaccard_distance`: sparse k-reciprocal Jaccard distance, memory O(N·k).
- :class:`DBSCANClusterer`: DBSCAN on that graph; :func:`dbscan_eps_sweep` for cheap eps scans.
- :class:`InfomapClusterer`: two-level directed Infomap on a cosine kNN graph.
- :func:`camera_centering`: per-camera mean removal before clustering.
- :func:`permute_cameras`: camera ids shuffled across images (a placebo for centring).
"""

from mqreid.cluster.camera import camera_centering, permute_cameras
from mqreid.cluster.dbscan import DBSCANClusterer, dbscan_eps_sweep
from mqreid.cluster.infomap import InfomapClusterer
from mqreid.cluster.jaccard import jaccard_distance
from mqreid.cluster.knn import knn_search

__all__ = ["DBSCANClusterer", "InfomapClusterer", "camera_centering", "permute_cameras", "dbscan_eps_sweep", "jaccard_distance", "knn_search"]
