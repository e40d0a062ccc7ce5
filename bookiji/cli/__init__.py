"""The operator CLI (Typer + rich). One module per command group."""
