"""Model tooling: the Triton model-repository renderer and the synthetic phantoms."""
