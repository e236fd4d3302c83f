"""Training: shared checkpointing and logging here; one module per trainable method."""
