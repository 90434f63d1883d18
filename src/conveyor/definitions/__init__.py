"""What an app is made of, as data: services, their queues, subscriptions, schedules, commands and
approval gates, and the registry that indexes them. Nothing here does I/O or knows the runtime."""
