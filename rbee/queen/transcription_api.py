"""`POST /v1/audio/transcriptions` and `/v1/audio/translations`: an uploaded recording heard by a worker of a
transcription model (Whisper), answered in the asked format (api/transcription.py), admitted, routed and started
from parked like any request. The upload is bounded (25 MB, OpenAI's limit) before its form is parsed."""

from __future__ import annotations

import pydantic
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rbee.api import audio as audio_wire
from rbee.api import openai as oai
from rbee.api import transcription, wire
from rbee.queen import parts
from rbee.queen.errors import ClientError, invalid, read_bounded
from rbee.queen.generation import refused
from rbee.queen.metrics import Exchange
from rbee.queen.openai_api import require_kind
from rbee.queen.scheduling import Ask
from rbee.spec.backends import ModelKind

FORM_ROOM = 1 << 20
"""Bytes of an upload beyond its file: the form's other fields and its boundaries."""
# The whole body is in memory already (read_bounded, at most MAX_AUDIO + FORM_ROOM): Starlette's parser would copy
# a file part past 1 MB to a temporary file on disk and read it back (a millisecond and a disk write per 2 MB).
MultiPartParser.spool_max_size = audio_wire.MAX_AUDIO + FORM_ROOM


async def transcriptions(request: Request) -> Response:
    return await _heard(request, "transcribe")


async def translations(request: Request) -> Response:
    return await _heard(request, "translate")


async def _heard(request: Request, task: transcription.Task) -> Response:
    queen = parts.of(request)
    key = queen.fleet.keys.authenticate(request)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ClientError(400, "send the audio as a multipart form (file, model, ...), as OpenAI's clients do")
    await read_bounded(request, audio_wire.MAX_AUDIO + FORM_ROOM)
    try:
        async with request.form(max_files=1, max_fields=16) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ClientError(400, "the form has no file; upload the audio as its file field", param="file")
            audio = await upload.read()
            fields = {name: value for name, value in form.multi_items() if isinstance(value, str)}
    except ValueError as malformed:  # python-multipart's and Starlette's word for a broken form
        raise ClientError(400, f"the form cannot be read: {malformed}") from None
    try:
        asked = transcription.form_of(fields)
    except wire.Unsupported as unserved:
        raise refused(unserved) from None
    except pydantic.ValidationError as failure:
        raise invalid(failure) from None
    queen.fleet.keys.permit(key, asked.model)
    require_kind(queen, asked.model, ModelKind.TRANSCRIPTION)
    exchange = Exchange(oai.new_id("transcript"), asked.model, key.name if key else None)
    try:
        body = transcription.to_worker(exchange.id, asked, audio, task)
    except wire.Unsupported as unserved:
        raise refused(unserved) from None
    except pydantic.ValidationError as failure:
        raise invalid(failure) from None
    ask = Ask(asked.model, request.headers.get("x-rbee-hive"), exchange.key, len(audio) // 1000)
    heard = await queen.dispatch.transcribe(ask, key, body, audio, exchange)
    shaped, media_type = transcription.answer(asked, task, heard)
    if isinstance(shaped, dict):
        return JSONResponse(shaped)
    return Response(shaped, media_type=media_type)
