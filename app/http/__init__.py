"""The HTTP layer: thin routes that parse, call the domain, and answer JSON."""
