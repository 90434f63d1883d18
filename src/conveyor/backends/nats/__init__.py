"""The NATS JetStream backend (``nats://``), issue 18."""
