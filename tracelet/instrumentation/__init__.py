"""Instrumentations: patches that capture what frameworks already compute."""
