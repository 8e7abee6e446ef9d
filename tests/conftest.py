"""Shared pytest configuration: quiet TensorFlow, fixed CPU threading."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
