"""Anomaly detection: defences that single out suspicious clients and drop or down-weight them
(FoolsGold, FreqFed)."""
