"""Data: the streamed ``datasets`` pipeline with its bad-image policy, and the view recipes."""
