"""The pure core of netwatch: model, selectors, the NetworkPolicy engine and analyses.

Nothing in this package performs I/O, reads a clock, starts a thread, or knows what a
Kubernetes client object or a kernel map looks like; time is passed in, objects arrive
already converted by `netwatch.k8s`. An import-linter contract enforces this in CI, which
is what lets every capture backend, the agent and the offline CLI share one engine.
"""
