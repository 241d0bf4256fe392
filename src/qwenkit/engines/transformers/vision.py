"""Qwen2.5-VL on the transformers engine: images to pixel patches, image slots to embedding positions.

A prompt holds one `<|image_pad|>` per image (the engine protocol's convention); `VisionInputs`
expands each into as many as the image's merged patch grid yields (t*h*w / merge^2), and
`mrope_positions` computes the M-RoPE (temporal, height, width) positions with the model's own
`get_rope_index`: after an image, text positions advance by its grid size, not its token count.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from qwenkit.engines.base import ImageInput
from qwenkit.errors import BadRequest

#: Qwen2.5-VL's image limits as LLM tokens: one token per (patch * merge)^2 = 28x28 pixels
MIN_IMAGE_TOKENS = 4


@dataclass
class VisionInputs:
    """One request's images, preprocessed: patches, grid per image and the expanded prompt."""

    pixel_values: torch.Tensor  # [patches, channels * temporal * patch^2]
    grid_thw: torch.Tensor  # [images, 3]
    prompt: list[int]  # the prompt with each image_pad repeated to the image's token count
    keys: list[str]  # per image: its sha256 (the preprocessing is fixed per engine)
    spans: list[tuple[int, int]]  # per image: [start, end) of its tokens in `prompt`

    def identity(self) -> list[int | str]:
        """`prompt` with each image's tokens replaced by its hash (what a prefix cache compares)."""
        keys: list[int | str] = list(self.prompt)
        for key, (start, end) in zip(self.keys, self.spans, strict=True):
            keys[start:end] = [key] * (end - start)
        return keys

    def split(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """(key, pixel patches, grid [1, 3]) per image."""
        sizes = self.grid_thw.prod(-1).tolist()
        pixels = torch.split(self.pixel_values, [int(n) for n in sizes])
        return [(k, p, g[None]) for k, p, g in zip(self.keys, pixels, self.grid_thw, strict=True)]


class ImagePreprocessor:
    """Turns a request's `ImageInput`s into model inputs, each bounded by `max_tokens` tokens."""

    def __init__(self, processor: Any, image_pad: int, max_tokens: int | None = None) -> None:
        self.processor = processor
        self.image_pad = image_pad
        self.merge = int(processor.merge_size)
        unit = (int(processor.patch_size) * self.merge) ** 2  # pixels per LLM token (28*28 for Qwen)
        size = processor.size
        longest = int(size["longest_edge"]) if max_tokens is None else max(max_tokens, MIN_IMAGE_TOKENS) * unit
        shortest = min(int(size["shortest_edge"]), longest)
        self.size = {"shortest_edge": shortest, "longest_edge": longest}

    def prepare(self, prompt: Sequence[int], images: Sequence[ImageInput]) -> VisionInputs:
        pictures = [_decode(image) for image in images]
        try:
            out = self.processor(images=pictures, return_tensors="pt", size=self.size)
        except (ValueError, OSError, Image.DecompressionBombError) as exc:
            raise BadRequest(f"the image processor refused an image: {exc}") from None
        grid = out["image_grid_thw"]
        counts = (grid.prod(-1) // self.merge**2).tolist()
        expanded: list[int] = []
        spans: list[tuple[int, int]] = []
        for token in prompt:
            if token == self.image_pad:
                spans.append((len(expanded), len(expanded) + int(counts[len(spans)])))
                expanded += [token] * int(counts[len(spans) - 1])
            else:
                expanded.append(token)
        keys = [image.sha256 for image in images]
        return VisionInputs(pixel_values=out["pixel_values"], grid_thw=grid, prompt=expanded, keys=keys, spans=spans)


class EncoderCache:
    """The vision tower's output per image hash, least recently used first out: an image sent
    again (a follow-up turn, the same picture in another request) is not encoded again."""

    def __init__(self, encode: Callable[..., Any], capacity: int = 16) -> None:
        self.encode = encode  # the model's get_image_features(pixel_values, image_grid_thw)
        self.capacity = capacity
        self.entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.encoded = 0

    def embeddings(
        self, images: Sequence[tuple[str, torch.Tensor, torch.Tensor]], device: torch.device
    ) -> list[torch.Tensor]:
        """The embeddings of `images` in order; the missing ones encoded together in one call."""
        missing = {key: (pixels, grid) for key, pixels, grid in images if key not in self.entries}
        if missing:
            pixels = torch.cat([p for p, _ in missing.values()]).to(device)
            grids = torch.cat([g for _, g in missing.values()]).to(device)
            out = self.encode(pixels, grids, return_dict=True).pooler_output
            for key, embedding in zip(missing, out, strict=True):
                self.entries[key] = embedding
            self.encoded += len(missing)
        self.hits += len(images) - len(missing)
        found = []
        for key, _, _ in images:
            self.entries.move_to_end(key)
            found.append(self.entries[key])
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return found


def mrope_positions(
    rope_index: Callable[..., tuple[torch.Tensor, torch.Tensor]], ids: Sequence[int], image_pad: int, grid: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """(positions [3, len(ids)], delta) for a prompt that starts at position 0: `delta` is what
    the next text position exceeds the token count by (negative after images)."""
    tensor = torch.tensor([list(ids)], dtype=torch.long)
    positions, delta = rope_index(tensor, mm_token_type_ids=(tensor == image_pad).int(), image_grid_thw=grid)
    return positions[:, 0, :], int(delta.reshape(-1)[0])


def _decode(image: ImageInput) -> Image.Image:
    try:
        with Image.open(io.BytesIO(image.data)) as opened:
            return opened.convert("RGB")
    # validated by the chat layer: only hand-built inputs get here
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadRequest(f"the image cannot be decoded: {exc}") from None
