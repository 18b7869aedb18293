"""Built-in attacks (one per module), registered in ``ATTACKS`` on import."""
