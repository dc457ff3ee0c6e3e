"""fedmm client layer (see docs/architecture.md)."""
