"""Real WebSocket clients driven by the integration tests."""
