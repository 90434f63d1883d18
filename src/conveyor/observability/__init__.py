"""Tracing, logging and metrics."""
