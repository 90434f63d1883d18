"""What operators query and act on: workflow status and graph, dead letters, health. Each takes the
narrow things it uses (a backend, a clock, the registry, the runtime), never the whole App."""
