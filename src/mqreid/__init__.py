"""mqreid: unsupervised re-identification with clustering and a multi-queue memory."""

__version__ = "0.1.0"
