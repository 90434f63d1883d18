"""Workflow tracking: status from history, graph from code."""
