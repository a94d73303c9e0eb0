"""Small shims that let third-party packages run in this environment (see each module's docstring)."""
