"""cbir: content-based image retrieval with CNN codes, PCA, intra-class k-means and an MLP."""

__version__ = "0.1.0"
