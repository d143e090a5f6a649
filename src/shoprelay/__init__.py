"""shoprelay: a first-party tracking relay that feeds e-commerce recommendation vendors."""

__version__ = "0.1.0"
