"""The queen's HTTP API as the keeper calls it: the operator API with the operator's credential (spec, status, events,
route, reconcile, shutdown) and the task API with an API key (`rbee infer`). Blocking calls: the keeper is a
command-line program."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from rbee.api import sse, wire
from rbee.clients import tls, transcript
from rbee.spec.policy import PolicyRef
from rbee.spec.schema import HiveFile

TIMEOUT = 10.0


class QueenCallError(Exception):
    """The queen did not answer, or refused; the message is what it said (or why it could not be asked)."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        """The HTTP status of a refusal; None when the queen could not be reached."""
        self.retry_after = retry_after
        """Seconds the queen said to wait before asking again (429 and 503 say it)."""


@dataclass(frozen=True, slots=True)
class Applied:
    """The spec the queen holds and the hives it has seen running."""

    generation: int
    spec: HiveFile | None
    seen_hives: frozenset[str]


def error_text(response: httpx.Response) -> str:
    """The sentence of an error body in either of rbee's shapes (OpenAI's or the wire's)."""
    try:
        error = response.json()["error"]
        return str(error["message"] if isinstance(error, dict) else error)
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


TASK_SILENCE = 60.0
"""The longest `run_task` waits for a byte: four of the task stream's keep-alives."""


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


class QueenClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = TIMEOUT) -> None:
        self.url = url.rstrip("/")
        self.headers = wire.bearer(token)
        self.timeout = timeout

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("timeout", self.timeout)
        started = time.time()
        try:
            response = httpx.request(
                method, f"{self.url}{path}", headers=self.headers, trust_env=False, verify=tls.context(), **kwargs
            )
        except httpx.HTTPError as error:
            transcript.keeper_call(method, path, None, started)
            raise QueenCallError(str(error) or type(error).__name__) from None
        transcript.keeper_call(method, path, response.status_code, started)
        if response.status_code >= 400:
            raise QueenCallError(error_text(response), response.status_code)
        return response

    def is_running(self) -> bool:
        """A queen answers at this URL and takes this credential."""
        try:
            self._call("GET", "/v2/status", timeout=2.0)
        except QueenCallError:
            return False
        return True

    def answers(self) -> bool:
        """Something answers /health at this URL (perhaps a queen of another fleet)."""
        try:
            return (
                httpx.get(f"{self.url}/health", timeout=2.0, trust_env=False, verify=tls.context()).status_code == 200
            )
        except httpx.HTTPError:
            return False

    def status(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("GET", "/v2/status").json()
        return answer

    def applied(self) -> Applied:
        body = self._call("GET", "/v2/spec").json()
        spec = HiveFile.model_validate(body["spec"]) if body.get("spec") else None
        return Applied(int(body.get("generation", 0)), spec, frozenset(body.get("seen_hives", ())))

    def push_spec(self, spec: HiveFile, source: str, policy: PolicyRef | None) -> tuple[int, bool]:
        """Make `spec` the queen's desired state: (generation, whether it changed). A routing policy is named by
        its digest; the queen reads it from its own disk."""
        body = {
            "spec": spec.model_dump(mode="json"),
            "source": source,
            "policy": policy.model_dump() if policy is not None else None,
        }
        answer = self._call("PUT", "/v2/spec", json=body, timeout=30.0).json()
        return int(answer["generation"]), bool(answer["changed"])

    def events(self, limit: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self._call("GET", "/v2/events", params={"limit": str(limit)}).json()["events"]
        return events

    def follow_events(self, limit: int) -> Iterator[dict[str, Any]]:
        """The last `limit` events, then each new one as it happens, until interrupted."""
        params = {"limit": str(limit), "follow": "1"}
        timeout = httpx.Timeout(self.timeout, read=None)  # the queen sends a keep-alive every 15 s
        try:
            with httpx.stream(
                "GET",
                f"{self.url}/v2/events",
                params=params,
                headers=self.headers,
                timeout=timeout,
                trust_env=False,
                verify=tls.context(),
            ) as stream:
                if stream.status_code >= 400:
                    stream.read()
                    raise QueenCallError(error_text(stream), stream.status_code)
                for event in sse.events(stream.iter_bytes()):
                    if event.data:
                        yield event.json()
        except httpx.HTTPError as error:
            raise QueenCallError(str(error) or type(error).__name__) from None

    def route(
        self,
        model: str,
        hive: str | None,
        prompt_chars: int,
        prompt: str | None = None,
        preferences: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """`preferences`: prefer, max_price, region, as a request's X-Rbee-* headers would give them."""
        params: dict[str, str | int] = {"model": model, "prompt_chars": prompt_chars, **(preferences or {})}
        if hive:
            params["hive"] = hive
        if prompt is not None:
            params["prompt"] = prompt[:4096]  # the queen reads only its beginning
        answer: dict[str, Any] = self._call("GET", "/v2/route", params=params).json()
        return answer

    def usage(self, seconds: float, by: str) -> dict[str, Any]:
        """The usage record since `seconds` ago, summed by key, provider or model."""
        answer: dict[str, Any] = self._call("GET", "/v2/usage", params={"since": seconds, "by": by}).json()
        return answer

    def providers(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("GET", "/v2/platform/providers").json()
        return answer

    def set_suspended(self, suspended: bool) -> bool:
        return bool(self._call("PUT", "/v2/reconcile", json={"suspended": suspended}).json()["suspended"])

    def shutdown(self) -> bool:
        """Ask the queen to stop; False when it could not be asked."""
        try:
            self._call("POST", "/v2/admin/shutdown", timeout=5.0)
        except QueenCallError:
            return False
        return True

    def run_task(
        self, body: dict[str, Any], created: Callable[[str], None] = lambda task_id: None
    ) -> Iterator[sse.Event]:
        """Create a task (`POST /v2/tasks`, with this client's credential as the API key), tell `created` its id
        and stream its events. The queen says something every 15 s; a minute of silence is an error."""
        timeout = httpx.Timeout(30.0, read=TASK_SILENCE)
        try:
            with httpx.Client(
                base_url=self.url, headers=self.headers, timeout=timeout, trust_env=False, verify=tls.context()
            ) as client:
                answer = client.post("/v2/tasks", json=body)
                if answer.status_code != 201:
                    raise QueenCallError(error_text(answer), answer.status_code, _retry_after(answer))
                created(answer.json()["task_id"])
                with client.stream("GET", answer.json()["events"]) as events:
                    yield from sse.events(events.iter_bytes())
        except httpx.ReadTimeout:
            raise QueenCallError(f"the queen sent nothing for {TASK_SILENCE:g} s") from None
        except httpx.HTTPError as error:
            raise QueenCallError(str(error) or type(error).__name__) from None

    def speak(self, body: dict[str, Any]) -> Iterator[bytes]:
        """Speech from `POST /v1/audio/speech`, its bytes as they come; a minute of silence is an error."""
        return self._streamed("/v1/audio/speech", body)

    def paint(self, body: dict[str, Any]) -> Iterator[sse.Event]:
        """The events of `POST /v1/images/generations` with stream: true (progress, then the pictures)."""
        return sse.events(self._streamed("/v1/images/generations", {**body, "stream": True}))

    def _streamed(self, path: str, body: dict[str, Any]) -> Iterator[bytes]:
        """A POST's answer, its bytes as they come; a refusal, or a minute of silence, is a QueenCallError."""
        timeout = httpx.Timeout(30.0, read=TASK_SILENCE)
        try:
            with httpx.stream(
                "POST",
                f"{self.url}{path}",
                json=body,
                headers=self.headers,
                timeout=timeout,
                trust_env=False,
                verify=tls.context(),
            ) as answer:
                if answer.status_code != 200:
                    answer.read()
                    raise QueenCallError(error_text(answer), answer.status_code, _retry_after(answer))
                yield from answer.iter_bytes()
        except httpx.ReadTimeout:
            raise QueenCallError(f"the queen sent nothing for {TASK_SILENCE:g} s") from None
        except httpx.HTTPError as error:
            raise QueenCallError(str(error) or type(error).__name__) from None

    def transcribe(self, model: str, recording: Path, language: str | None) -> str:
        """The text of a recording (`POST /v1/audio/transcriptions`, its file uploaded as a form)."""
        fields = {"model": model, "response_format": "text", **({"language": language} if language else {})}
        try:
            with recording.open("rb") as audio:
                answer = httpx.post(
                    f"{self.url}/v1/audio/transcriptions",
                    files={"file": (recording.name, audio)},
                    data=fields,
                    headers=self.headers,
                    timeout=httpx.Timeout(30.0, read=TASK_SILENCE * 10),  # a long recording is heard whole
                    trust_env=False,
                    verify=tls.context(),
                )
        except httpx.HTTPError as error:
            raise QueenCallError(str(error) or type(error).__name__) from None
        if answer.status_code != 200:
            raise QueenCallError(error_text(answer), answer.status_code, _retry_after(answer))
        return answer.text

    def cancel_task(self, task_id: str) -> None:
        """End a task on the queen (and its generation on the worker)."""
        self._call("DELETE", f"/v2/tasks/{quote(task_id, safe='')}", timeout=5.0)
