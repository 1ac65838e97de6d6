"""Built-in ``ekn`` subcommands and training-shell commands."""
