"""Preprocessing kinds (physical grid, template alignment) and their registry; each records how to invert itself."""
