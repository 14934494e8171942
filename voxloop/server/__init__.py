"""The realtime server: HTTP + WebSocket on one asyncio process (FastAPI on uvicorn)."""
