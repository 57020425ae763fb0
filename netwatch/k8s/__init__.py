"""Kubernetes objects to core types: snapshot files (one-shot or reloading) and live list+watch."""
