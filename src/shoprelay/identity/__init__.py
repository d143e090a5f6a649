"""Who an event belongs to: the signed visitor cookie and each visitor's remembered state."""
