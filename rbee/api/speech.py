"""The speech request body (pure): OpenAI's `POST /v1/audio/speech` (model, input, voice, response_format, speed),
what the openai clients, Open WebUI and Home Assistant send, translated into the speech worker's request."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from rbee.api.audio import AudioFormat, SpeakRequest
from rbee.api.wire import Unsupported, refuse_unserved

NOT_YET = {
    "instructions": "speaking instructions (gpt-4o-mini-tts) are not served by eSpeak NG",
    "stream_format": "audio comes as a stream of its bytes; rbee does not wrap it in SSE events",
}
NEUTRAL = {"instructions": ("", None), "stream_format": ("audio", None)}
FORMATS = ", ".join(str(fmt) for fmt in AudioFormat)


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    input: Annotated[str, Field(min_length=1, max_length=4096)]
    voice: Annotated[str, Field(min_length=1, max_length=64)]
    response_format: str = "mp3"
    """OpenAI's default, which its clients leave to the server."""
    speed: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0

    def refuse_unserved(self) -> None:
        refuse_unserved(self.model_extra or {}, (), NOT_YET, NEUTRAL)

    @property
    def format(self) -> AudioFormat:
        try:
            return AudioFormat(self.response_format)
        except ValueError:
            raise Unsupported(
                "response_format", f"response_format {self.response_format} is not served; ask for {FORMATS}"
            ) from None

    def to_worker(self, request_id: str) -> SpeakRequest:
        """The worker's request; Unsupported for a field rbee does not serve, pydantic's ValidationError (naming
        `voice`) for a voice name no engine has, in characters no voice name uses."""
        self.refuse_unserved()
        fmt = self.format
        return SpeakRequest(request_id=request_id, input=self.input, voice=self.voice, format=fmt, speed=self.speed)
