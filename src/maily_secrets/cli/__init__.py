"""``mailyctl``: the operator CLI."""
