"""Runnable examples shipped with conveyor (``conveyor demo`` runs the order fulfillment one)."""
