"""Compensation tasks: one per forward step that changes state, named as its inverse."""
