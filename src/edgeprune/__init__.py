"""edgeprune: fine-grained pruning for edge devices."""

__version__ = "0.1.0"
