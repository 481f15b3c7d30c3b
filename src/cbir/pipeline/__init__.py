"""The workflow's glue: the config and its grid, rule resources, the rule-script runner, `cbir index`."""
