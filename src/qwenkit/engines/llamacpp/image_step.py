"""The scheduler's images (a vision model loaded with its mmproj, `vision.py`).

Each `<|image_pad|>` of a prompt stands for one image, expanded into that image's LLM tokens
(`slots.expand`). Images are prepared (decoded, sized) at submit, so an undecodable image or a
prompt its images push past the context is refused before queueing. Text tokens of every slot
share one `llama_decode` per step; an image's embeddings then go in their own decode (one image
per step and adapter set), on the scheduler's thread.
"""

from __future__ import annotations

from collections.abc import Sequence

import llama_cpp as C

from qwenkit.engines.base import Request
from qwenkit.engines.llamacpp.model import LlamaModel
from qwenkit.engines.llamacpp.slots import Key, Slot, expand
from qwenkit.engines.llamacpp.vision import PreparedImage, VisionTower
from qwenkit.errors import BadRequest, QwenkitError


class ImageStep:
    """Checks a request's images at submit, keys its prompt, and decodes a slot's next image."""

    def __init__(self, tower: VisionTower, model: LlamaModel, *, n_ctx: int) -> None:
        self.tower = tower
        self.image_pad = image_pad(model)
        self.n_ctx = n_ctx

    def check(self, request: Request) -> None:
        """Refuse what a request with images cannot run (after `check_request`); prepares its images."""
        if request.prompt[-1] == self.image_pad:
            raise BadRequest("the prompt must not end with an image")
        if request.params.prompt_logprobs is not None:
            raise BadRequest("prompt logprobs are not available for prompts with images")
        images = self.prepare(request)  # BadRequest if undecodable
        expanded = len(request.prompt) + sum(image.n_tokens - 1 for image in images)
        if expanded >= self.n_ctx:
            raise BadRequest(
                f"the prompt with its images is {expanded} tokens; "
                f"this model was loaded with a context of {self.n_ctx} tokens"
            )

    def prepare(self, request: Request) -> list[PreparedImage]:
        """The request's images, prepared (cached since submit unless evicted)."""
        return [self.tower.prepare(image) for image in request.images]

    def known_keys(self, request: Request) -> Sequence[Key]:
        """The request's cache keys as far as they are known before its images are prepared
        (to pick its slot): up to the first image not prepared yet."""
        if not request.images:
            return request.prompt
        known = [self.tower.known(image.sha256) for image in request.images]
        n = next((i for i, image in enumerate(known) if image is None), len(known))
        cut = len(request.prompt)
        if n < len(known):  # stop at the first image slot whose size is unknown
            cut = [i for i, token in enumerate(request.prompt) if token == self.image_pad][n]
        return expand(request.prompt[:cut], [image for image in known[:n] if image is not None], self.image_pad)

    def decode(self, ctx: C.llama_context_p, slot: Slot, n_batch: int) -> None:
        """Decode the image `slot`'s feed starts with (encoding it unless cached), in its own batch;
        raises QwenkitError when the tower fails."""
        head = slot.feed[0]
        assert isinstance(head, tuple)
        image = slot.images[head[0]]
        end_pos = self.tower.decode(ctx, image, slot.end_pos, slot.seq_id, n_batch)
        slot.extend_image(image, end_pos)
        del slot.feed[: image.n_tokens]


def image_pad(model: LlamaModel) -> int:
    """The model's `<|image_pad|>` token id, from its own vocabulary."""
    ids = model.tokenize("<|image_pad|>", special=True)
    if len(ids) != 1:
        raise QwenkitError("this model's vocabulary has no <|image_pad|> token: it is not a Qwen-VL model")
    return ids[0]
