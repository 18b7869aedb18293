"""Hybrid defences: detect and drop suspicious clients, then clip (and noise) the rest (FLAME, DeepSight)."""
