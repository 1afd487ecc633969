"""Command-line tools, installed as commands by ``pip install``:

- ``mqreid-report``: the table of a multirun (mean ± std, paired differences, the effect of each setting);
- ``mqreid-plot``: training curves of one or several runs;
- ``mqreid-eps``: how DBSCAN's eps shapes the clusters of a checkpoint's training set;
- ``mqreid-export``: ONNX export of a checkpoint, with a parity check.

Each is also ``python -m mqreid.tools.<name>``. The Python API is :mod:`mqreid.inference` and
:mod:`mqreid.visualize`; the training machinery lives in the other subpackages.
"""
