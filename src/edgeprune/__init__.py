"""edgeprune: fine-grained pruning for edge devices."""
