"""Evaluation: features, the kNN monitor, probes, fine-tuning; metric modules shipped for offline use."""
