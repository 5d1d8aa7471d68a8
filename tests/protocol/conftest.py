"""Protocol tests need no fixtures of their own."""
