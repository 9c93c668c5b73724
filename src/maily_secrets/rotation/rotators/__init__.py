"""Built-in rotators; importing this package registers them."""
