"""Pictures from text with diffusion pipelines (a Hugging Face diffusers folder: `model_index.json` and its
components: Stable Diffusion and its kin), on CUDA, Metal (torch's MPS device) or the CPU.

One request at a time (a pipeline holds one set of activations); a request's n images are denoised in one batch.
The pipeline calls back after every denoising step: the worker reports the step, decodes a preview when one was
asked for, and a cancel or a time limit ends the work there instead of after the last step. Image k of a request
starts from noise seeded with seed + k on the CPU's generator, so the same request gives the same bytes whatever
the device's own random numbers do.
"""

from __future__ import annotations

import base64
import inspect
import io
import os
import secrets
import threading
from collections.abc import Callable
from typing import Any

from rbee.api.image_generation import ImageFormat, ImageRequest, Picture
from rbee.worker.backends import BackendError

Report = Callable[[str, Any], None]
"""Called from the generating thread: ("step", (done, steps)) after each step, ("partial", (index, Picture))."""
PIL_FORMATS = {ImageFormat.PNG: "PNG", ImageFormat.JPEG: "JPEG", ImageFormat.WEBP: "WEBP"}


class Cancelled(BackendError):
    """The request was cancelled (its client left, it ran past its time limit, the worker is stopping)."""


class Refused(BackendError):
    """A request this pipeline cannot take: the client's 400, before any step. `param` names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class DiffusersBackend:
    name = "diffusers"
    kind = "image"

    def __init__(self, model_path: str, *, device: str = "cpu", threads: int | None = None) -> None:
        self.model_path = model_path
        self.device = "cpu" if device == "auto" else device
        self.threads = threads or max(1, os.cpu_count() or 1)
        self.size = (512, 512)
        """The pipeline's own width and height, for a request that names none."""
        self._pipe: Any = None
        self._takes: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def _torch_device(self) -> str:
        return {"cuda": "cuda:0", "metal": "mps"}.get(self.device, self.device)

    def load(self, progress: Callable[[float], None]) -> None:
        import torch
        from diffusers import DiffusionPipeline

        torch.set_num_threads(self.threads)
        progress(0.05)
        dtype = torch.float32 if self.device == "cpu" else torch.float16
        # Said explicitly: no code from the model's folder runs, and weights load only from safetensors.
        pipe = DiffusionPipeline.from_pretrained(
            self.model_path, dtype=dtype, use_safetensors=True, trust_remote_code=False
        )
        progress(0.8)
        takes = frozenset(inspect.signature(pipe.__call__).parameters)
        if "callback_on_step_end" not in takes:
            raise BackendError(f"the {type(pipe).__name__} pipeline reports no steps; rbee serves those that do")
        pipe.set_progress_bar_config(disable=True)
        pipe = pipe.to(self._torch_device())
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        scale = int(getattr(pipe, "vae_scale_factor", 8))
        sample: Any = getattr(pipe, "default_sample_size", None)
        if sample is None:  # a UNet pipeline's own size is its UNet's sample size in latents
            sample = getattr(getattr(denoiser, "config", None), "sample_size", 64)
        side = int(sample[0] if isinstance(sample, (list, tuple)) else sample) * scale
        self.size = (side, side)
        self._pipe, self._takes = pipe, takes
        progress(1.0)

    def unload(self) -> None:
        self._pipe = None

    def check(self, request: ImageRequest) -> None:
        """Refused naming the field this pipeline does not take."""
        for field, argument in (("negative_prompt", "negative_prompt"), ("guidance_scale", "guidance_scale")):
            if getattr(request, field) is not None and argument not in self._takes:
                raise Refused(field, f"{field} is not taken by this model's {type(self._pipe).__name__} pipeline")
        if request.partial_images and getattr(self._pipe, "unet", None) is None:
            raise Refused("partial_images", "previews are made only by UNet pipelines (Stable Diffusion and kin)")

    def paint(self, request: ImageRequest, report: Report, cancel: threading.Event) -> list[Picture]:
        """The request's pictures, encoded; Cancelled when `cancel` is set before the last step."""
        import torch

        pipe = self._pipe
        if pipe is None:
            raise BackendError("the model is not loaded")
        self.check(request)
        torch.set_num_threads(self.threads)  # in the generating thread itself, as for text (FACTS.md)
        seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
        generators = [torch.Generator("cpu").manual_seed(seed + index) for index in range(request.n)]
        options: dict[str, Any] = {"num_images_per_prompt": request.n, "generator": generators, "output_type": "pil"}
        for field, argument in (
            ("width", "width"),
            ("height", "height"),
            ("steps", "num_inference_steps"),
            ("guidance_scale", "guidance_scale"),
            ("negative_prompt", "negative_prompt"),
        ):
            if getattr(request, field) is not None:
                options[argument] = getattr(request, field)
        previews: set[int] = set()

        def after_step(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if cancel.is_set():
                raise Cancelled("cancelled")
            steps = int(getattr(pipeline, "num_timesteps", 0) or request.steps or step + 1)
            if not previews and request.partial_images:
                previews.update(
                    round(steps * k / (request.partial_images + 1)) - 1 for k in range(1, 1 + request.partial_images)
                )
            report("step", (step + 1, steps))
            if step in previews and "latents" in tensors:
                index = sorted(previews).index(step)
                report("partial", (index, self._preview(tensors["latents"], request, seed)))
            return tensors

        with self._lock, torch.inference_mode():
            images = pipe(request.prompt, callback_on_step_end=after_step, **options).images
        if cancel.is_set():
            raise Cancelled("cancelled")
        return [encoded(image, request, seed + index) for index, image in enumerate(images)]

    def _preview(self, latents: Any, request: ImageRequest, seed: int) -> Picture:
        """The first image as it stands: its latents at this step through the autoencoder."""
        pipe = self._pipe
        vae = pipe.vae
        decoded = vae.decode(latents[:1] / vae.config.scaling_factor, return_dict=False)[0]
        image = pipe.image_processor.postprocess(decoded, output_type="pil")[0]
        return encoded(image, request, seed)


def encoded(image: Any, request: ImageRequest, seed: int) -> Picture:
    """A PIL image as a file in the request's format, in base64."""
    buffer = io.BytesIO()
    fmt = PIL_FORMATS[request.format]
    options: dict[str, Any] = {}
    if request.format is not ImageFormat.PNG:
        options["quality"] = request.quality if request.quality is not None else 90
        image = image.convert("RGB")
    image.save(buffer, fmt, **options)
    data = base64.b64encode(buffer.getvalue()).decode()
    return Picture(format=request.format, data=data, width=image.width, height=image.height, seed=seed)


ENGINE = DiffusersBackend
