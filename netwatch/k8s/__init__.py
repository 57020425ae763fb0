"""Kubernetes objects to core types: snapshot files and (later) live list+watch."""
