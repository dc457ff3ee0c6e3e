"""fedmm simulations layer (see docs/architecture.md)."""
