"""The harness: run config, data, models, workloads, Flower apps, recorder, CLI."""
