"""HTTP and WebSocket handlers, one module per area."""
