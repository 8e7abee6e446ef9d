"""Placeholder replaced by the builder."""
