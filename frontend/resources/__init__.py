"""Falcon resources, one module per area of the API. Each declares its ``auth`` level."""
