"""Helpers for the SLURM end-to-end tests: a real one-node cluster started in a temporary directory."""
