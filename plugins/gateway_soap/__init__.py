"""Built-in soap connector, registered through the ``gateway`` entry point like any plugin."""
