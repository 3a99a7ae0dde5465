"""Backend plugins: the protocol and registry (base) and the built-in backends."""
