"""Train the shapes text-to-image reference model (diffusers classes, from scratch, CPU)."""
