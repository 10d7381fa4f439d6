"""Placement: runs the same actors in-process or on Ray behind one handle type."""
