"""OpenAI's image request translated into the image worker's: sizes, formats, rbee's own fields, and each field
rbee does not serve refused by name (its neutral value accepted)."""

from __future__ import annotations

import pydantic
import pytest

from rbee.api import image_generation as images
from rbee.api.wire import Unsupported


def worker_of(**fields: object) -> images.ImageRequest:
    body = images.ImageGenerationRequest.model_validate({"model": "sd", "prompt": "a fox", **fields})
    return body.to_worker("img-1", 600.0)


def test_the_defaults_leave_size_and_steps_to_the_model() -> None:
    request = worker_of()
    assert (request.width, request.height, request.steps, request.n) == (None, None, None, 1)
    assert request.format is images.ImageFormat.PNG and request.events is images.Events.OPENAI
    assert request.time_limit == 600.0 and not request.stream


def test_rbees_own_fields_reach_the_worker() -> None:
    request = worker_of(
        size="768x512", n=3, seed=9, steps=20, guidance_scale=5.5, negative_prompt="blur", stream=True, partial_images=2
    )
    assert (request.width, request.height, request.n, request.seed, request.steps) == (768, 512, 3, 9, 20)
    assert (request.guidance_scale, request.negative_prompt, request.partial_images) == (5.5, "blur", 2)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"size": "1024"}, "size"),
        ({"response_format": "url"}, "response_format"),
        ({"quality": "hd"}, "quality"),
        ({"style": "natural"}, "style"),
        ({"background": "transparent"}, "background"),
        ({"moderation": "low"}, "moderation"),
        ({"output_format": "svg"}, "output_format"),
        ({"output_compression": 80}, "output_compression"),
        ({"partial_images": 1}, "partial_images"),
        ({"frame_count": 4}, "frame_count"),
        ({"mask": "x"}, "mask"),
    ],
)
def test_unserved_fields_are_refused_by_name(fields: dict[str, object], param: str) -> None:
    with pytest.raises(Unsupported) as refused:
        worker_of(**fields)
    assert refused.value.param == param


@pytest.mark.parametrize(
    "fields",
    [
        {"response_format": "b64_json"},
        {"quality": "auto"},
        {"quality": "standard"},
        {"background": "opaque"},
        {"moderation": "auto"},
        {"user": "u-1", "safety_identifier": "h"},
        {"output_format": "jpeg", "output_compression": 75},
    ],
)
def test_neutral_values_and_no_ops_are_accepted(fields: dict[str, object]) -> None:
    worker_of(**fields)


@pytest.mark.parametrize("size", ["60x64", "64x4096", "0x64", "32x32"])
def test_sizes_out_of_bounds_name_the_side(size: str) -> None:
    with pytest.raises(pydantic.ValidationError) as refused:
        worker_of(size=size)
    assert refused.value.errors()[0]["loc"][0] in ("width", "height")


def test_the_openai_answer_shape() -> None:
    pictures = [{"format": "png", "data": "AAAA", "width": 64, "height": 32}]
    answer = images.whole_answer(pictures, images.ImageFormat.PNG, 7)
    assert answer["created"] == 7 and answer["size"] == "64x32"
    assert answer["data"] == [{"b64_json": "AAAA", "revised_prompt": None}]
