"""NetworkPolicy conformance suite: upstream e2e scenarios and recipes, driven through the CLI."""
