"""The REST API under fuzzing and corrupt uploads, against a real `voxloop serve` on loopback.

schemathesis generates requests from the server's own OpenAPI schema (a few examples per operation, so
the run stays within a couple of minutes): no 5xx, and every answer matches the schema. The server runs
with fake cloud API keys in its environment; no response and no log line may carry one.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.integration.servers import ServerProcess, running_server

pytestmark = pytest.mark.integration

KEY = "vx-fuzz-key-8d1e0b6f3a2c4e59"
FAKE_SECRETS = {
    "OPENAI_API_KEY": "sk-fake-openai-3f9a1c77e0b24d1e",
    "ELEVENLABS_API_KEY": "fake-eleven-6b2d90aa41c3",
    "GOOGLE_API_KEY": "AIzaFakeGoogleKey0c1d2e3f4a5b",
    "VOXLOOP_API_KEY": KEY,
}
BEARER = {"Authorization": f"Bearer {KEY}"}
MAX_UPLOAD = 1 << 20
EXAMPLES = 12  # per operation
CHECKS = [not_a_server_error, response_schema_conformance]
seen: list[str] = []  # every response's headers and body, for the secrets check


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("fuzz")
    env = {
        **FAKE_SECRETS,
        "VOXLOOP_SECURITY__REQUIRE_AUTH": "always",
        "VOXLOOP_VOICES__DIR": str(root / "voices"),  # fuzzed voice uploads land here, not in the repo
        "VOXLOOP_LIMITS__MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
    }
    with running_server(root / "server.log", env) as process:
        yield process


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples each run: a failure reproduces
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    database=None,
)


def test_fuzzed_requests_get_no_5xx_and_schema_conformant_answers(fuzz_server: ServerProcess) -> None:
    # One test driving every operation (schemathesis' pytest fixture loader does not run on pytest 9).
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    failures: dict[str, str] = {}
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), "some operations' schemas could not be read"
    for operation in operations:

        @FUZZ_SETTINGS
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case[Any]) -> None:
            response = case.call(base_url=fuzz_server.url, headers=BEARER, timeout=60)
            seen.append(f"{dict(response.headers)}\n{response.content.decode(errors='replace')}")
            case.validate_response(response, checks=CHECKS)

        try:
            check()
        except (AssertionError, FailureGroup) as exc:  # a failed check: note it, fuzz the other operations too
            failures[operation.label] = str(exc)[:2000]
    assert len(operations) >= 8, [operation.label for operation in operations]
    assert not failures, "\n\n".join(f"{label}:\n{why}" for label, why in failures.items())


# -- corrupt uploads ----------------------------------------------------------------------------


def wav_header(*, rate: int = 16000, channels: int = 1, bits: int = 16, data_bytes: int, riff_bytes: int) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)
    return (
        b"RIFF"
        + struct.pack("<I", riff_bytes)
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def corrupt_uploads(wav: bytes) -> list[tuple[str, bytes]]:
    body = wav[44:]
    return [
        ("truncated.wav", wav[: len(wav) // 2]),
        ("huge_data_size.wav", wav_header(data_bytes=0xFFFFFFF0, riff_bytes=0xFFFFFFFF) + body[:32000]),
        ("rate_zero.wav", wav_header(rate=0, data_bytes=len(body), riff_bytes=len(body) + 36) + body),
        ("no_channels.wav", wav_header(channels=0, data_bytes=len(body), riff_bytes=len(body) + 36) + body),
        ("odd_bits.wav", wav_header(bits=13, data_bytes=len(body), riff_bytes=len(body) + 36) + body),
        ("wav_named.mp3", wav),
        ("png.mp3", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8),
        ("random.ogg", bytes((i * 7919) % 256 for i in range(20000))),
        ("text.flac", b"fLaC but not really\n" * 100),
        ("zero.wav", b""),
    ]


@pytest.mark.parametrize("path", ["/api/transcribe", "/api/voices"])
def test_corrupt_uploads_get_a_clear_4xx_and_the_server_goes_on(
    fuzz_server: ServerProcess, eval_dir: Path, path: str
) -> None:
    wav = (eval_dir / "audio" / "librivox_ss01_0880.wav").read_bytes()
    for name, data in corrupt_uploads(wav):
        fields = {"name": "fuzzed-voice", "language": "en"} if path == "/api/voices" else None
        response = httpx.post(
            f"{fuzz_server.url}{path}", headers=BEARER, files={"file": (name, data)}, data=fields, timeout=60
        )
        seen.append(response.text)
        assert response.status_code < 500, (name, response.status_code, response.text)
        if response.status_code >= 400:
            detail = response.json()["detail"]
            assert len(str(detail)) > 20, (name, detail)
        if path == "/api/voices" and response.status_code == 201:
            httpx.delete(f"{fuzz_server.url}/api/voices/fuzzed-voice", headers=BEARER, timeout=30)
    assert httpx.get(f"{fuzz_server.url}/healthz", timeout=10).json()["status"] == "ok"


def test_a_truncated_recording_is_transcribed_as_far_as_it_goes(fuzz_server: ServerProcess, eval_dir: Path) -> None:
    wav = (eval_dir / "audio" / "librivox_ss01_0880.wav").read_bytes()  # "he was not an ill disposed young man"
    response = httpx.post(
        f"{fuzz_server.url}/api/transcribe", headers=BEARER, files={"file": ("cut.wav", wav[: len(wav) // 2])}
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert 1.0 < result["duration_s"] < 2.0
    assert "he was" in result["text"].lower()


def test_uploads_past_limits_max_upload_bytes_are_413_even_when_only_declared(fuzz_server: ServerProcess) -> None:
    big = httpx.post(
        f"{fuzz_server.url}/api/transcribe", headers=BEARER, files={"file": ("big.wav", bytes(MAX_UPLOAD + 1))}
    )
    assert big.status_code == 413 and "1 MB (limits.max_upload_bytes)" in big.json()["detail"]
    # A Content-Length of a terabyte with a tiny body: refused from the headers, without waiting for the body.
    head = (
        f"POST /api/transcribe HTTP/1.1\r\nHost: 127.0.0.1:{fuzz_server.port}\r\nAuthorization: Bearer {KEY}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000000000\r\n\r\n--b\r\n"
    )
    with socket.create_connection(("127.0.0.1", fuzz_server.port), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = sock.recv(4096).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]


def test_no_response_and_no_log_line_carries_a_secret(fuzz_server: ServerProcess) -> None:
    for path in ("/api/config", "/healthz", "/api/voices", "/metrics", "/openapi.json"):
        response = httpx.get(f"{fuzz_server.url}{path}", headers=BEARER, timeout=30)
        assert response.status_code == 200, (path, response.text)
        seen.append(f"{dict(response.headers)}\n{response.text}")
    refused = httpx.get(f"{fuzz_server.url}/api/config", headers={"Authorization": "Bearer wrong-guess"}, timeout=10)
    seen.append(refused.text)
    assert len(seen) > 50  # the fuzz run above was recorded
    log = fuzz_server.log()
    for name, secret in FAKE_SECRETS.items():
        assert not any(secret in text for text in seen), f"${name} leaked into a response"
        assert secret not in log, f"${name} leaked into the server log"
