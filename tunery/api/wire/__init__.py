"""Vertex JSON shapes, one module per API family: parsed once at the edge, rendered from typed objects."""
