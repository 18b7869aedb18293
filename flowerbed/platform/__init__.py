"""The harness: run config, registries, roles, the Workload protocol, the wire format, the
Flower apps and round loop, simulation, and the run folder. It knows workloads, attacks,
triggers and defences only through the registries (docs/architecture.md)."""
