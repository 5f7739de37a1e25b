"""Compute backends: where an experiment's command runs (local subprocess, HF Jobs)."""
