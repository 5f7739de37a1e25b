"""AutoLab."""
