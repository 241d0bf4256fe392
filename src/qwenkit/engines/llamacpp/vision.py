"""Images for Qwen-VL on llama.cpp: the mmproj (vision tower) loaded with libmtmd.

An image is decoded to RGB with Pillow, preprocessed by libmtmd into one image chunk (its LLM
token count and M-RoPE position span), encoded by the vision tower once, and its embeddings are
decoded into a sequence of the scheduler's context at the position the scheduler gives. Both the
chunk and the embeddings are kept per image sha256 (a bounded LRU), so a follow-up turn that
repeats an image is not re-encoded even when its KV cells were evicted.

`prepare` and `known` may run on any thread (one lock): the scheduler prepares a request's images
when it is submitted, so an undecodable image or one too large for the context is a BadRequest
at once; libmtmd's preprocessing then runs beside encoding, as llama-server runs it in its HTTP
threads. `encode` and `decode` (the vision tower, the decoder) run on the scheduler's thread only.

User text never reaches libmtmd (chunks come from a bitmap-only `mtmd_input_part`, no marker
parsing), and the context's media marker is random anyway, so no text can claim an image slot.
"""

from __future__ import annotations

import ctypes
import io
import secrets
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np
import numpy.typing as npt
from llama_cpp import mtmd_cpp as M
from PIL import Image, UnidentifiedImageError

from qwenkit.engines.base import ImageInput
from qwenkit.engines.llamacpp.model import LlamaModel, collect_errors, route_mtmd_log
from qwenkit.errors import BadRequest, ModelLoadError, QwenkitError

_CHUNK_IMAGE = 1  # MTMD_INPUT_CHUNK_TYPE_IMAGE
_QWEN_VL_MIN_TOKENS = 8  # llama.cpp's default lower bound of LLM tokens per image for Qwen-VL


@dataclass(eq=False)
class PreparedImage:
    """One image, preprocessed: its libmtmd chunk, LLM token count and position span (M-RoPE:
    max(grid height, grid width), not the token count), and its embeddings once encoded."""

    sha256: str
    chunk: M.mtmd_input_chunk_p
    n_tokens: int
    n_pos: int
    embedding: npt.NDArray[np.float32] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # freed when the last holder (the cache, a running request) lets go
        weakref.finalize(self, M.mtmd_input_chunk_free, self.chunk)


class VisionTower:
    """Owns an `mtmd_context` for one model: prepares, encodes and decodes images."""

    def __init__(
        self,
        model: LlamaModel,
        mmproj: str | Path,
        *,
        n_threads: int,
        use_gpu: bool = False,
        image_max_tokens: int | None = None,
        max_cached: int = 16,
    ) -> None:
        mmproj = Path(mmproj)
        if not mmproj.is_file():
            raise ModelLoadError(f"mmproj file not found: {mmproj}")
        route_mtmd_log()
        params = M.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = n_threads
        params.print_timings = False
        self._marker = f"<__media_{secrets.token_hex(12)}__>".encode()  # kept alive while the context lives
        params.media_marker = self._marker
        if image_max_tokens is not None:
            if image_max_tokens < 1:
                raise QwenkitError(f"image_max_tokens must be positive, not {image_max_tokens}")
            params.image_max_tokens = image_max_tokens
            # libmtmd refuses a maximum below the projector's minimum (8 tokens for Qwen-VL)
            params.image_min_tokens = min(image_max_tokens, _QWEN_VL_MIN_TOKENS)
        with collect_errors() as errors:
            self.ptr = M.mtmd_init_from_file(str(mmproj).encode(), model.ptr, params)
        if not self.ptr:
            reason = f" ({errors[-1]})" if errors else ""
            raise ModelLoadError(
                f"libmtmd could not load the vision projector {mmproj}{reason}: it must be the mmproj GGUF "
                "made for this model"
            )
        if not M.mtmd_support_vision(self.ptr):
            self.close()
            raise ModelLoadError(f"{mmproj} has no vision encoder (an audio-only projector?)")
        self.path = mmproj
        self.mrope = bool(M.mtmd_decode_use_mrope(self.ptr))
        self.n_embd = model.n_embd_inp
        self.max_cached = max_cached
        self._cache: OrderedDict[str, PreparedImage] = OrderedDict()
        self._lock = threading.Lock()  # the cache's; never held while an image is preprocessed
        self._tokenizing = threading.Lock()  # one libmtmd preprocessing at a time
        self.encoded = 0  # vision-tower passes run, since start (cache misses)

    def prepare(self, image: ImageInput) -> PreparedImage:
        """The image's chunk (from the cache, or preprocessed now). BadRequest if it does not decode."""
        with self._lock:
            hit = self._cache.get(image.sha256)
            if hit is not None:
                self._cache.move_to_end(image.sha256)
                return hit
        # preprocessing is slow: the cache lock (which the scheduler takes in `known`) is not held meanwhile
        with self._tokenizing:
            prepared = self._tokenize(image)
        with self._lock:
            hit = self._cache.get(image.sha256)
            if hit is not None:  # another request prepared it meanwhile: one copy is kept
                self._cache.move_to_end(image.sha256)
                return hit
            self._cache[image.sha256] = prepared
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
            return prepared

    def known(self, sha256: str) -> PreparedImage | None:
        """The cached preparation of an image, if any (the cache's order is left as it is)."""
        with self._lock:
            return self._cache.get(sha256)

    def _tokenize(self, image: ImageInput) -> PreparedImage:
        rgb, width, height = _rgb(image.data)
        pixels = (ctypes.c_uint8 * len(rgb)).from_buffer_copy(rgb)
        bitmap = M.mtmd_bitmap_init(width, height, pixels)
        if not bitmap:
            raise QwenkitError("libmtmd could not take the image")
        chunks = M.mtmd_input_chunks_init()
        try:
            M.mtmd_bitmap_set_id(bitmap, image.sha256.encode())
            part = M.mtmd_input_part()
            part.bitmap = bitmap
            parts = (ctypes.POINTER(M.mtmd_input_part) * 1)(ctypes.pointer(part))
            with collect_errors() as errors:
                rc = M.mtmd_tokenize_from_parts(self.ptr, chunks, parts, 1, False)
            if rc != 0:
                raise BadRequest(f"the image could not be preprocessed{f' ({errors[-1]})' if errors else ''}")
            for i in range(M.mtmd_input_chunks_size(chunks)):
                chunk = M.mtmd_input_chunks_get(chunks, i)
                if M.mtmd_input_chunk_get_type(chunk) == _CHUNK_IMAGE:
                    owned = M.mtmd_input_chunk_copy(chunk)
                    if not owned:
                        raise QwenkitError("libmtmd could not copy an image chunk")
                    return PreparedImage(
                        image.sha256,
                        owned,
                        int(M.mtmd_input_chunk_get_n_tokens(owned)),
                        int(M.mtmd_input_chunk_get_n_pos(owned)),
                    )
            raise QwenkitError("libmtmd returned no image chunk for an image")
        finally:
            M.mtmd_input_chunks_free(chunks)
            M.mtmd_bitmap_free(bitmap)

    def encode(self, image: PreparedImage) -> npt.NDArray[np.float32]:
        """The image's embeddings (n_tokens x n_embd), running the vision tower on a cache miss."""
        if image.embedding is None:
            with collect_errors() as errors:
                rc = M.mtmd_encode_chunk(self.ptr, image.chunk)
            if rc != 0:
                raise QwenkitError(f"the vision encoder failed ({errors[-1] if errors else f'code {rc}'})")
            out = M.mtmd_get_output_embd(self.ptr)
            if not out:
                raise QwenkitError("the vision encoder returned no embeddings")
            n = image.n_tokens * self.n_embd
            image.embedding = np.ctypeslib.as_array(out, shape=(n,)).copy()
            self.encoded += 1
        return image.embedding

    def decode(self, ctx: llama_cpp.llama_context_p, image: PreparedImage, pos: int, seq_id: int, n_batch: int) -> int:
        """Decode `image` into sequence `seq_id` of `ctx` from position `pos` (encoding it first
        on a cache miss); returns the position that follows it (pos + n_pos)."""
        embedding = self.encode(image)
        new_pos = ctypes.c_int32(0)
        with collect_errors() as errors:
            rc = M.mtmd_helper_decode_image_chunk(
                self.ptr,
                ctx,
                image.chunk,
                embedding.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                pos,
                seq_id,
                n_batch,
                ctypes.byref(new_pos),
                M.mtmd_helper_post_decode_callback(),  # NULL: no callback
                None,
            )
        if rc != 0:
            raise QwenkitError(f"decoding the image failed ({errors[-1] if errors else f'code {rc}'})")
        return int(new_pos.value)

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
        if self.ptr:
            M.mtmd_free(self.ptr)
            self.ptr = None


def _rgb(data: bytes) -> tuple[bytes, int, int]:
    """Encoded image bytes as packed RGB (the first frame of an animation), with width and height."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.seek(0)
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadRequest(f"the image could not be decoded ({exc})") from None
    return rgb.tobytes(), rgb.width, rgb.height
