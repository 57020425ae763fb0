"""Output formatting: tables for humans, stable JSON/YAML for machines."""
