"""The stages: one module per kind (wake, vad, stt, llm, chunker, tts).

Each is a pure core, testable without asyncio, plus a thin adapter to the Stage protocol.
"""
