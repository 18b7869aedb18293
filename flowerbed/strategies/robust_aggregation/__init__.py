"""Robust aggregation: rules that bound any one client's influence on the aggregate
(Krum, Multi-Krum, Bulyan, median, trimmed mean, geometric median, clipping, robust learning rate, FLTrust)."""
