"""The relay's front door: routes that accept Segment-shaped messages and validate them."""
