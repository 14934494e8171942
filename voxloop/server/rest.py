"""REST API (being written): health, public config, transcribe, synthesize, voices."""

from fastapi import APIRouter

router = APIRouter()
