"""Model packages: the card schema and discovery (no torch), weights and the network (torch)."""
