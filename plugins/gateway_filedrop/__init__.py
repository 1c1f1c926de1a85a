"""Built-in filedrop connector, registered through the ``gateway`` entry point like any plugin."""
