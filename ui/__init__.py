"""User interfaces: the `candor` CLI and (later) the web app."""
