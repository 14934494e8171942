"""voxloop: a realtime voice-chat server built on an asyncio stage graph."""

__version__ = "0.1.0"
