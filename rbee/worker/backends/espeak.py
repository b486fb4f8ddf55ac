"""Speech from eSpeak NG, the program (`espeak-ng`, Debian's package): formant synthesis in every language it
has, no model file, many times faster than real time on one core.

One `espeak-ng` process per request, started without a shell: the text goes in on stdin (never as an argument,
where any user of the machine could read it and its length is bounded), the voice is an argument only after it
is checked against the voices the program lists, and the 16-bit mono samples come out on stdout as they are
made. A request that ends early (its client left, its worker stops) kills its process.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import subprocess
from collections.abc import AsyncIterator, Callable

from rbee.worker.backends import BackendError

OPENAI_VOICES = {
    "alloy": "en-us",
    "ash": "en-us+m3",
    "ballad": "en-gb+m2",
    "coral": "en-us+f2",
    "echo": "en-us+m1",
    "fable": "en-gb",
    "nova": "en-us+f3",
    "onyx": "en-us+m7",
    "sage": "en-us+f4",
    "shimmer": "en-us+f5",
    "verse": "en-gb+m4",
}
"""OpenAI's voice names, each an eSpeak NG voice (a language and a variant), so OpenAI's clients work as they are."""
COMMON_LANGUAGES = ("en-us", "en-gb", "de", "fr", "es", "it", "pt", "nl", "pl", "ru", "cmn", "ja")
"""Named first when a client asks for a voice there is not."""
WORDS_PER_MINUTE = 175
"""eSpeak NG's own pace: speed 1.0."""
PACE = (80, 450)
"""The words a minute it speaks at: speed is 175 x speed, held within these."""
WAV_HEADER = 44
READ = 65536
STOP_WAIT = 5.0
"""Seconds a finished or killed espeak-ng process has to exit."""


def _listed(output: str, *, languages: bool) -> set[str]:
    """The names `-v` takes from a listing: of `espeak-ng --voices`, each language and its voice file's name
    (`fr-fr` and `fr`); of `--voices=variant`, each variant's file name (`f3`)."""
    found = set()
    for line in output.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5:
            found.add(fields[4].rpartition("/")[2])
            if languages:
                found.add(fields[1])
    return found


class Espeak:
    name = "espeak"
    device = "cpu"
    kind = "speech"

    def __init__(self, model_path: str, device: str = "cpu", threads: int | None = None) -> None:
        self.program = model_path
        """The catalog's path of the model: the espeak-ng program itself."""
        self.rate = 22050
        self.languages: set[str] = set()
        self.variants: set[str] = set()

    def load(self, progress: Callable[[float], None]) -> None:
        """Its voices, and its sample rate (from the header of a word spoken now)."""

        def output(*arguments: str) -> bytes:
            try:
                done = subprocess.run(
                    [self.program, *arguments], capture_output=True, timeout=30, stdin=subprocess.DEVNULL
                )
            except (OSError, subprocess.TimeoutExpired) as error:
                raise BackendError(f"{self.program} {' '.join(arguments)} did not run: {error}") from None
            if done.returncode != 0:
                raise BackendError(f"{self.program} {' '.join(arguments)} failed: {done.stderr.decode().strip()}")
            return done.stdout

        self.languages = _listed(output("--voices").decode(), languages=True)
        self.variants = _listed(output("--voices=variant").decode(), languages=False)
        spoken = output("--stdout", "rbee")
        if len(spoken) < WAV_HEADER or spoken[:4] != b"RIFF":
            raise BackendError(f"{self.program} --stdout wrote no WAV audio")
        self.rate = struct.unpack_from("<I", spoken, 24)[0]
        progress(1.0)

    def unload(self) -> None:
        pass

    def voice(self, name: str) -> str | None:
        """The eSpeak NG voice for a request's `voice` (OpenAI's name, a language, or language+variant); None
        when it has no such voice."""
        name = OPENAI_VOICES.get(name, name)
        language, _, variant = name.partition("+")
        if language in self.languages and (not variant or variant in self.variants):
            return name
        return None

    def voices(self) -> str:
        """What a client may ask for, for the refusal of a voice it does not have."""
        common = [name for name in COMMON_LANGUAGES if name in self.languages]
        return (
            f"{', '.join(OPENAI_VOICES)}; or a language ({', '.join(common)} … {len(self.languages)} in all, "
            "`espeak-ng --voices` lists them), with +variant if you like (+f3, +m2, +whisper …)"
        )

    async def speak(self, text: str, voice: str, speed: float) -> AsyncIterator[bytes]:
        """The speech's 16-bit mono samples at `rate`, as they are made; BackendError when the program fails."""
        pace = round(min(max(WORDS_PER_MINUTE * speed, PACE[0]), PACE[1]))
        process = await asyncio.create_subprocess_exec(
            self.program,
            "--stdin",
            "--stdout",
            "-v",
            voice,
            "-s",
            str(pace),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        finished = False
        try:
            process.stdin.write(text.encode())
            await process.stdin.drain()
            process.stdin.close()
            await process.stdout.readexactly(WAV_HEADER)  # its own, sized for no length: rbee writes one
            yield await process.stdout.read(READ)  # the first sound at once; then whole 64 KiB pieces (1.5 s of
            while True:  # speech, made in ~2 ms): a tenth of the writes that espeak-ng's own 4 KiB ones would take
                try:
                    yield await process.stdout.readexactly(READ)
                except asyncio.IncompleteReadError as end:
                    if end.partial:
                        yield end.partial
                    break
            async with asyncio.timeout(STOP_WAIT):
                code = await process.wait()
            finished = True
            if code != 0:
                why = (await process.stderr.read()).decode(errors="replace").strip()
                raise BackendError(f"espeak-ng failed (exit {code}): {why or 'no reason given'}")
        except (asyncio.IncompleteReadError, BrokenPipeError, ConnectionResetError):  # before its header
            why = (await process.stderr.read()).decode(errors="replace").strip()
            raise BackendError(f"espeak-ng stopped before its audio: {why or 'no reason given'}") from None
        finally:
            if not finished and process.returncode is None:
                process.kill()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STOP_WAIT):
                        await process.wait()


ENGINE = Espeak
