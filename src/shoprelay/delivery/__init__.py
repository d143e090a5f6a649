"""Sending stored work to vendors: limits, retries, batching, order."""
