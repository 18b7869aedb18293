"""Image classification, the backdoor setting: the workload, its models and its datasets.

Every attack and defence run uses it; it plugs into the platform like any extension
(registered by name in ``WORKLOADS``, ``MODELS`` and ``DATASETS``)."""
