"""Batch jobs users run with ``ray job submit`` / ``ray submit``."""
