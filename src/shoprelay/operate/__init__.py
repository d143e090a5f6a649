"""Running the relay: health, metrics, the live debugger, logs, the OpenAPI document."""
