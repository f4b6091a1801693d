"""Model tooling: training, export, evaluation and import. Needs the `train` extra (torch); never
imported by the gateway or the workers."""
