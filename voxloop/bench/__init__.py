"""The concurrency benchmark's reusable parts: conversations, simulated users, processes, stats."""
