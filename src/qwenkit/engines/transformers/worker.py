"""The transformers step loop: one thread, one batched KV cache, requests joining between steps.

All running sequences share one `DynamicCache` of shape [batch, heads, columns, dim] and one
2-D attention mask over its columns. Left padding keeps them aligned:

- New requests are prefilled together (prompts left-padded to the longest), then merged into
  the running batch: the shorter of the two caches is padded on the left (masked columns) and
  the two are concatenated along the batch. No running sequence is recomputed.
- Each decode step feeds every sequence its next token(s). A sequence that has more than one
  (tokens forced by a `StepController`) makes the others take masked filler columns for that
  step; holes in the mask are harmless, each row's `position_ids` count its real tokens only.
- Finished and cancelled sequences leave between steps (`batch_select_indices`), and columns
  that no remaining sequence uses are trimmed from the left.

Prefix cache (`PrefixCache`, bounded by `prefix_cache_tokens`): a sequence that leaves keeps its
real columns' KV with the identity of the tokens they hold (image tokens by image hash). A new
request, per adapter, starts from the longest prefix it shares with one (at least `MIN_PREFIX`
tokens, never inside an image, and never its whole prompt: its last token runs, for the first
logits): the prefill's cache starts from those prefixes, left-padded, and runs only the rest.
Its M-RoPE positions are those of the whole prompt from the rest on. Prompts scored with
`prompt_logprobs` run whole. Sliding-window caches keep nothing (their layers drop old columns,
so a row's KV is not its whole sequence).

Qwen2.5-VL: a request's images are preprocessed at `submit` (each image slot expanded to its
patch grid's token count), encoded by the vision tower at prefill (those not already in the
`EncoderCache`, by image hash) and placed with M-RoPE positions from the model's own
`get_rope_index`; every row carries `delta`, the offset of its next rope position from its token
count, so image and text-only rows decode in one batch.

Sampling, stop strings, end-of-generation ids, `max_tokens`, forced tokens and
`cached_prompt_tokens` follow the llama.cpp engine's scheduler exactly. Prefill is not chunked:
a long prompt holds up the running streams for the duration of its forward pass. Caches with
sliding-window layers cannot be merged; for such models a new request waits until the running
batch is done.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer, LinearAttentionLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling

from qwenkit.engines.base import Chunk, FinishReason, QueueFull, Request, TokenLogprob, check_request
from qwenkit.engines.common import StepLoop
from qwenkit.engines.hf_vocab import Vocab
from qwenkit.engines.output import RequestOutput
from qwenkit.engines.speculation import DraftLength, NgramDrafter
from qwenkit.engines.transformers.prefix_cache import Entry, Key, LayerKV, PrefixCache
from qwenkit.engines.transformers.sampling import RowSampler, check_params, logprob_of
from qwenkit.engines.transformers.vision import EncoderCache, ImagePreprocessor, VisionInputs, mrope_positions
from qwenkit.errors import BadRequest, QwenkitError

log = logging.getLogger("qwenkit.transformers")

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch
MIN_PREFIX = 16  # shorter shared prefixes are recomputed rather than copied
GENERATED_PAD = "generated image pad"  # the identity of an image pad token the model generated: matches no image


class _Row:
    """One running sequence: a row of the batch."""

    def __init__(self, request: Request, sampler: RowSampler, worker: Worker, source: _Row | None = None) -> None:
        self.request: Request | None = request
        self.params = request.params
        self.prompt = request.prompt
        self.sampler = sampler
        self.source = source  # another choice of the same request, whose prefill this row repeats
        self.pos = 0  # real tokens in the cache for this row
        self.delta = 0  # its next (M-)RoPE position minus `pos` (negative after images)
        self.vision: VisionInputs | None = None  # images still to encode (in the prefill)
        self.adapter = request.adapters[0][0] if request.adapters else BASE  # peft adapter name
        self.feed: list[int] = [] if source else list(request.prompt)  # tokens to run next
        self.tokens: list[int] = []  # the tokens in the cache for this row (`pos` of them)
        self.keys: list[Key] = list(self.feed)  # the prompt's identity (image tokens by image hash)
        self.images_cached = 0  # leading images whose tokens came from the prefix cache
        self.out = RequestOutput(
            request.emit,
            request.params,
            request.controller,
            piece=worker.vocab.piece,
            end_ids=worker.eos_ids,
            n_ctx=worker.n_ctx,
            on_finish=self.release,
        )
        p = request.params
        on = worker.speculative if p.speculative is None else p.speculative
        limit = min(worker.draft_max, worker.draft_max if p.draft_max is None else p.draft_max) if on else 0
        speculates = limit > 0 and not request.images
        self.drafter = NgramDrafter(request.prompt) if speculates else None  # prompt lookup
        self.draft_length = DraftLength(limit) if speculates else None

    def release(self) -> None:
        """Leave the batch (before the last chunk is sent, so stats are already right)."""
        self.request = None
        self.feed = []

    @property
    def generated(self) -> list[int]:
        return self.out.generated


class Worker(StepLoop):
    """Runs the step loop on a background thread; `submit` from any thread."""

    def __init__(
        self,
        model: PreTrainedModel,
        vocab: Vocab,
        *,
        n_ctx: int,
        max_batch: int,
        max_waiting: int,
        eos_ids: set[int],
        n_threads: int | None = None,
        vision: ImagePreprocessor | None = None,
        prefix_cache_tokens: int = 0,
        speculative: bool = False,
        draft_max: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.speculative = speculative  # the default for requests that do not say
        self.draft_max = draft_max
        self.vision = vision
        # M-RoPE models (Qwen2.5-VL) take [3, rows, columns] positions; kept before any peft wrapping
        inner = getattr(model, "model", None)
        self._rope_index = getattr(inner, "get_rope_index", None)
        encode = getattr(inner, "get_image_features", None)
        if vision is not None and (encode is None or self._rope_index is None):
            raise QwenkitError(f"{type(model).__name__} has no get_image_features/get_rope_index: not a Qwen-VL model")
        self.encoder = EncoderCache(encode) if vision is not None and encode is not None else None
        self._inputs: dict[int, VisionInputs] = {}  # by id() of a submitted request with images
        self.vocab = vocab
        self.n_ctx = n_ctx
        self.max_batch = max(1, max_batch)
        self.max_waiting = max_waiting
        self.eos_ids = set(eos_ids)
        self.n_threads = n_threads
        self.n_vocab = int(model.config.get_text_config().vocab_size)
        self.device = model.get_input_embeddings().weight.device
        self.rows: list[_Row] = []
        self.cache: DynamicCache | None = None  # with `mask`, set exactly while there are rows
        self.mask: torch.Tensor | None = None  # [rows, columns], 1 where a column holds a real token
        self._mergeable: bool | None = None  # learnt from the first cache
        # Linear-attention layers (Qwen3.5, Qwen3-Next) keep one recurrent state per row, which
        # holds the whole past and cannot be cut back to a prefix: no prefix cache for them.
        layer_types = getattr(model.config.get_text_config(), "layer_types", None) or []
        self.recurrent = "linear_attention" in layer_types
        self.prefix_cache_off = (
            "recurrent (linear-attention) layers: a state cannot be cut back to a prefix"
            if self.recurrent and prefix_cache_tokens > 0
            else None
        )
        self.prefix = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens > 0 and not self.recurrent else None
        self.adapter_names: list[str] = []
        self._start_thread("qwenkit-transformers")

    # ----- public, any thread -----------------------------------------------------------

    def add_adapter(self, name: str, path: Path) -> None:
        """Load a peft LoRA adapter directory; rows then run on their own adapter in one batch."""
        from peft import PeftModel

        if not (path / "adapter_config.json").is_file():
            raise QwenkitError(f"{path} is not a peft adapter directory (the transformers engine takes those)")
        with self._cv:
            if self.rows or self._waiting:
                raise QwenkitError(
                    "the transformers engine loads a LoRA adapter only while idle (no request running or waiting)"
                )
            if name in self.adapter_names or name == BASE:
                raise QwenkitError(f"a LoRA adapter named {name!r} is already loaded")
            try:
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(str(path), adapter_name=name)
                else:
                    self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
            except (ValueError, KeyError, RuntimeError, OSError) as exc:
                raise QwenkitError(f"cannot load the LoRA adapter {path}: {exc}") from None
            self.model.eval()
            self.adapter_names.append(name)

    def submit(self, request: Request) -> Request:
        image_pad = self.vision.image_pad if self.vision else None
        check_request(request, n_ctx=self.n_ctx, n_vocab=self.n_vocab, adapters=self.adapter_names, image_pad=image_pad)
        inputs = self._prepare_images(request) if request.images and self.vision else None
        if len(request.adapters) > 1 or any(scale != 1.0 for _, scale in request.adapters):
            raise BadRequest("the transformers engine applies one LoRA adapter per request, at scale 1")
        check_params(request.params)
        if request.n > self.max_batch:
            raise QwenkitError(f"n={request.n} needs as many batch rows; this engine runs {self.max_batch}")
        with self._cv:
            if self._closed:
                raise QwenkitError("the engine is closed")
            if len(self._waiting) >= self.max_waiting and len(self.rows) >= self.max_batch:
                raise QueueFull(f"server busy: {len(self._waiting)} requests already waiting")
            if inputs is not None:
                self._inputs[id(request)] = inputs
            self._waiting.append(request)
            self._cv.notify()
        return request

    def _prepare_images(self, request: Request) -> VisionInputs:
        """Preprocess the images (on the caller's thread) and expand the prompt's image slots; the
        last chunk then reports the expanded prompt length as `prompt_tokens`."""
        if self.vision is None:
            raise RuntimeError("no vision")  # submit only calls this for a vision model
        if request.params.prompt_logprobs is not None:
            raise BadRequest("prompt_logprobs are not available for prompts with images")
        inputs = self.vision.prepare(request.prompt, request.images)
        if len(inputs.prompt) >= self.n_ctx:
            raise BadRequest(
                f"the prompt has {len(inputs.prompt)} tokens with its images expanded; this model was loaded "
                f"with a context of {self.n_ctx} tokens"
            )
        emit, length = request.emit, len(inputs.prompt)

        def counted(chunk: Chunk) -> None:
            if chunk.finish_reason is not None:
                chunk.prompt_tokens = length
            emit(chunk)

        request.emit = counted
        return inputs

    def _occupancy(self) -> tuple[int, int, int]:
        rows = list(self.rows)
        return sum(r.request is not None for r in rows), sum(r.pos for r in rows), self.n_ctx * self.max_batch

    # ----- worker thread ----------------------------------------------------------------

    def _loop(self) -> None:
        if self.n_threads:  # OpenMP's thread count is per calling thread: set it on this one
            torch.set_num_threads(self.n_threads)
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not self._closed and not self._waiting and not self.rows:
                        self._cv.wait()
                    if self._closed:
                        break
                    admitted = self._admit_locked()
                try:
                    self._drop_cancelled()
                    if admitted:
                        self._prefill(admitted)
                    if self.rows:
                        self._decode()
                except Exception as exc:  # a broken step must not kill the thread: fail the requests
                    log.exception("transformers step failed")
                    for row in self.rows + [r for r in admitted if r not in self.rows]:
                        if row.request is not None:
                            self._finish(row, "abort", error=f"decode failed: {exc}")
                    self._reset()
        for row in self.rows:
            if row.request is not None:
                self._finish(row, "abort", error="the engine is shutting down")
        for request in self._waiting:
            request.emit(Chunk("", finish_reason="abort", error="the engine is shutting down"))
        self._waiting.clear()
        self._inputs.clear()
        self._reset()

    def _admit_locked(self) -> list[_Row]:
        if self.rows and self._mergeable is False:
            return []  # this cache cannot take new rows while others run
        admitted: list[_Row] = []
        while self._waiting and len(self.rows) + len(admitted) + self._waiting[0].n <= self.max_batch:
            request = self._waiting.popleft()
            inputs = self._inputs.pop(id(request), None)
            choices = request.choices()
            if choices[0].cancelled:
                for choice in choices:
                    choice.emit(Chunk("", finish_reason="abort"))
                continue
            try:
                samplers = [RowSampler(choice.params, self.device) for choice in choices]
            except QwenkitError as exc:
                for choice in choices:
                    choice.emit(Chunk("", finish_reason="abort", error=str(exc)))
                continue
            leader = _Row(choices[0], samplers[0], self)
            if inputs is not None:
                leader.vision, leader.feed, leader.keys = inputs, list(inputs.prompt), inputs.identity()
            admitted.append(leader)
            admitted += [_Row(c, s, self, source=leader) for c, s in zip(choices[1:], samplers[1:], strict=True)]
        return admitted

    def _drop_cancelled(self) -> None:
        dropped = False
        for row in self.rows:
            if row.request is not None and row.request.cancelled:
                self._finish(row, "abort")
                dropped = True
        if dropped:
            self._compact()

    def _forward(
        self, rows: list[_Row], cache: DynamicCache, mask: torch.Tensor | None, *, every: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run each row's `feed` (left-padded to the longest) on `cache`: the last logits per row
        ([rows, vocab]), or with `every` the logits of every column ([rows, columns, vocab])."""
        width = max(len(r.feed) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        new_mask = torch.zeros((len(rows), width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        mrope = torch.zeros((3, len(rows), width), dtype=torch.long) if self._mrope else None
        images = [part for r in rows if r.vision is not None for part in r.vision.split()[r.images_cached :]]
        for i, row in enumerate(rows):
            n = len(row.feed)
            ids[i, width - n :] = torch.tensor(row.feed, dtype=torch.long)
            new_mask[i, width - n :] = 1
            start = row.pos + row.delta
            positions[i, :] = start  # filler columns: any position, they are masked
            positions[i, width - n :] = torch.arange(start, start + n)
            if mrope is not None:
                mrope[:, i, :] = positions[i]
                if row.vision is not None:  # a prefill with images (after any cached prefix)
                    mrope[:, i, width - n :], row.delta = self._image_positions(row)
        mask = new_mask if mask is None else torch.cat([mask, new_mask.to(mask.device)], dim=1)
        # with adapters loaded, each row runs on its own (peft's mixed-batch LoRA)
        mixed: dict[str, object] = {"adapter_names": [row.adapter for row in rows]} if self.adapter_names else {}
        if images and self.encoder is not None:  # the model fills the image slots row by row, in order
            embeddings = self.encoder.embeddings(images, self.device)
            mixed["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=tuple(embeddings))}
        for row in rows:
            row.vision = None
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=(positions if mrope is None else mrope).to(self.device),
            cache=cache,
            use_cache=True,
            logits_to_keep=0 if every else 1,
            **mixed,
        )
        for row in rows:
            row.pos += len(row.feed)
            row.tokens += row.feed
            row.feed = []
        return (out.logits if every else out.logits[:, -1, :]), mask.to(self.device)

    def _prefill(self, rows: list[_Row]) -> None:
        """Prefill the prompts of new rows together, each after the longest prefix the prefix cache
        shares with it; other choices of a request repeat its row."""
        leaders = [r for r in rows if r.source is None]
        self._prompt_tokens += sum(len(r.feed) for r in leaders)
        scored = any(r.params.prompt_logprobs is not None for r in leaders)
        cache, prefix_mask = self._reuse_prefixes(leaders)
        logits, mask = self._forward(leaders, cache, prefix_mask, every=scored)
        if scored:
            for i, row in enumerate(leaders):
                if row.params.prompt_logprobs is not None:
                    row.out.prompt_logprobs = self._prompt_logprobs(row.prompt, row.params.prompt_logprobs, logits[i])
            logits = logits[:, -1, :]
        if len(leaders) < len(rows):
            index = [leaders.index(r.source or r) for r in rows]
            _select(cache, torch.tensor(index, dtype=torch.long))
            mask, logits = mask[index], logits[index]
            for row in rows:
                leader = row.source or row
                row.pos, row.delta, row.tokens, row.keys = leader.pos, leader.delta, list(leader.tokens), leader.keys
                row.out.cached_prompt_tokens = leader.out.cached_prompt_tokens
        if self._mergeable is None:
            self._mergeable = all(type(layer) in (DynamicLayer, LinearAttentionLayer) for layer in cache.layers)
        if not self.rows:
            self.rows, self.cache, self.mask = rows, cache, mask
        else:
            self._merge(rows, cache, mask)
        for i, row in enumerate(rows):
            self._on_token(row, logits[i])
        self._compact()

    def _reuse_prefixes(self, leaders: list[_Row]) -> tuple[DynamicCache, torch.Tensor | None]:
        """A cache for the leaders' prefill holding, left-padded, the prefix each shares with a
        finished sequence, and its mask (None when no prefix is shared)."""
        cache = DynamicCache(config=self.model.config)
        found = [self._find_prefix(row) for row in leaders]
        width = max(n for _, n in found)
        if width == 0:
            return cache, None
        template = next(entry for entry, _ in found if entry is not None)
        for layer, (k0, v0) in enumerate(template.layers):
            keys, values = [], []
            for entry, n in found:
                k, v = entry.layers[layer] if entry is not None else (k0, v0)
                keys.append(_pad_left(k[:, :, :n], width, 2))
                values.append(_pad_left(v[:, :, :n], width, 2))
            cache.update(torch.cat(keys), torch.cat(values), layer)
        mask = torch.zeros((len(leaders), width), dtype=torch.long)
        for i, (row, (_, n)) in enumerate(zip(leaders, found, strict=True)):
            mask[i, width - n :] = 1
            row.pos, row.tokens, row.feed = n, row.feed[:n], row.feed[n:]
            row.out.cached_prompt_tokens = n
            if row.vision is not None:
                row.images_cached = sum(start < n for start, _ in row.vision.spans)
            self._prefix_hit_tokens += n
        return cache, mask

    def _find_prefix(self, row: _Row) -> tuple[Entry | None, int]:
        """The prefix cache's entry sharing the longest usable prefix with the row's prompt."""
        if self.prefix is None or row.params.prompt_logprobs is not None:  # scoring needs every position
            return None, 0
        entry, n = self.prefix.find(row.adapter, row.keys)
        n = min(n, len(row.keys) - 1)  # one prompt token at least runs: the first logits come from it
        for start, end in row.vision.spans if row.vision is not None else []:
            if start < n < end:  # an image is encoded whole: never split it
                n = start
        return (entry, n) if n >= MIN_PREFIX else (None, 0)

    def _keep_prefix(self, index: int, row: _Row) -> None:
        """Put a finished row's real columns in the prefix cache, with the identity of their tokens."""
        cache, mask = self._running()
        columns = mask[index].nonzero().squeeze(-1)
        if self.prefix is None or columns.numel() != row.pos or len(row.tokens) != row.pos:
            raise RuntimeError(f"row {index} holds {columns.numel()} columns for {row.pos} tokens")
        layers: list[LayerKV] = []
        for layer in cache.layers:
            at = columns.to(layer.keys.device)
            layers.append((layer.keys[index : index + 1, :, at], layer.values[index : index + 1, :, at]))
        pad = self.vision.image_pad if self.vision is not None else None
        generated = [GENERATED_PAD if t == pad else t for t in row.tokens[len(row.keys) :]]
        self.prefix.store(row.adapter, row.keys[: row.pos] + generated, layers)

    @property
    def _mrope(self) -> bool:
        return self.vision is not None and self._rope_index is not None

    def _image_positions(self, row: _Row) -> tuple[torch.Tensor, int]:
        if row.vision is None or self._rope_index is None or self.vision is None:
            raise RuntimeError("not an image row")  # _forward asks only for rows with images
        positions, delta = mrope_positions(
            self._rope_index, row.vision.prompt, self.vision.image_pad, row.vision.grid_thw
        )
        return positions[:, row.pos :], delta

    @staticmethod
    def _prompt_logprobs(prompt: list[int], top: int, logits: torch.Tensor) -> list[TokenLogprob | None]:
        """Each prompt token's logprob from the column before it (the row is left-padded)."""
        start = logits.shape[0] - len(prompt)
        return [None] + [logprob_of(logits[start + i], prompt[i + 1], top) for i in range(len(prompt) - 1)]

    def _merge(self, rows: list[_Row], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Append `rows` (their own cache and mask) to the running batch, left-padding the shorter."""
        running, running_mask = self._running()
        width = max(running_mask.shape[1], mask.shape[1])
        for mine, theirs in zip(running.layers, cache.layers, strict=False):
            if isinstance(mine, LinearAttentionLayer):  # a state per row, whatever the columns
                for i in range(mine.number_of_states):
                    mine.conv_states[i] = torch.cat([mine.conv_states[i], theirs.conv_states[i]])
                    mine.recurrent_states[i] = torch.cat([mine.recurrent_states[i], theirs.recurrent_states[i]])
                continue
            mine.keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(theirs.keys, width, 2)], dim=0)
            mine.values = torch.cat([_pad_left(mine.values, width, 2), _pad_left(theirs.values, width, 2)], dim=0)
        self.mask = torch.cat([_pad_left(running_mask, width, 1), _pad_left(mask, width, 1)], dim=0)
        self.rows = self.rows + rows

    def _running(self) -> tuple[DynamicCache, torch.Tensor]:
        """The running batch's cache and mask (there are rows)."""
        if self.cache is None or self.mask is None:
            raise RuntimeError("no running batch")  # the step loop only asks while rows run
        return self.cache, self.mask

    def _decode(self) -> None:
        cache, mask = self._running()
        # A filler column would still advance a recurrent state (decay, convolution): with such
        # layers every row runs one token per step, forced tokens over the next steps unsampled,
        # and nothing is drafted (a rejected guess could not be taken back out of the state).
        later = {id(row): row.feed[1:] for row in self.rows} if self.recurrent else {}
        for row in self.rows:
            row.feed = row.feed[:1] if self.recurrent else row.feed
        drafts = [[] if self.recurrent else self._draft(row) for row in self.rows]
        for row, draft in zip(self.rows, drafts, strict=True):
            row.feed = row.feed + draft
        every = any(drafts)  # a drafting row needs the logits of each of its columns
        fed = [len(row.feed) for row in self.rows]
        logits, self.mask = self._forward(self.rows, cache, mask, every=every)
        for i, row in enumerate(self.rows):
            if later.get(id(row)):
                row.feed = later[id(row)]
            elif row.request is None:
                continue
            elif not every:
                self._on_token(row, logits[i])
            elif drafts[i]:
                self._verify(i, row, logits[i, -fed[i] :], drafts[i])
            else:
                self._on_token(row, logits[i, -1])
        self._compact()

    def _draft(self, row: _Row) -> list[int]:
        """The tokens a decoding row guesses follow its next one (prompt lookup), within
        `max_tokens` and the context."""
        if row.drafter is None or row.draft_length is None or len(row.feed) != 1:
            return []
        limit = min(
            row.draft_length.next(),
            row.params.max_tokens - len(row.generated) - 1,
            self.n_ctx - row.pos - 3,
        )
        return row.drafter.draft(limit)

    def _verify(self, index: int, row: _Row, logits: torch.Tensor, draft: list[int]) -> None:
        """Sample a row's next token and drafted positions in order, as plain decoding would; keep
        the drafted columns while the sample before each equals it, and mask out the rest."""
        base = row.pos - len(draft) - 1  # the row's tokens before this step
        row.out.drafted_tokens += len(draft)
        self._drafted_tokens += len(draft)
        kept = 0
        for j, guess in enumerate(draft):
            self._on_token(row, logits[j], used=base + j + 1, guess=guess)
            if row.out.finished or row.feed != [guess]:
                break
            row.feed = []
            kept += 1
        else:
            self._on_token(row, logits[len(draft)], used=base + len(draft) + 1)
        rejected = len(draft) - kept
        if rejected:
            assert self.mask is not None
            self.mask[index, -rejected:] = 0
            row.pos -= rejected
            del row.tokens[-rejected:]
        self._accepted_draft_tokens += kept
        if row.draft_length is not None:
            row.draft_length.record(len(draft), kept)

    def _compact(self) -> None:
        """Drop finished rows from the cache, and the leading columns nobody uses any more."""
        keep = [i for i, row in enumerate(self.rows) if row.request is not None]
        if self.prefix is not None and self._mergeable and len(keep) < len(self.rows):
            for i, row in enumerate(self.rows):
                if row.request is None:
                    self._keep_prefix(i, row)
        if not keep:
            self._reset()
            return
        cache, mask = self._running()
        if len(keep) < len(self.rows):
            index = torch.tensor(keep, dtype=torch.long)  # on the CPU: layers may sit on several devices
            _select(cache, index)
            mask = self.mask = mask[index.to(mask.device)]
            self.rows = [self.rows[i] for i in keep]
        used = mask.any(dim=0).nonzero()
        first = int(used[0]) if used.numel() else 0
        if first > 0 and self._mergeable:
            for layer in cache.layers:
                if isinstance(layer, LinearAttentionLayer):
                    continue
                layer.keys = layer.keys[:, :, first:]
                layer.values = layer.values[:, :, first:]
            self.mask = mask[:, first:]

    def _reset(self) -> None:
        self.rows, self.cache, self.mask = [], None, None

    def _on_token(self, row: _Row, logits: torch.Tensor, *, used: int | None = None, guess: int | None = None) -> None:
        """Sample a row's next token from `logits`; `used`: positions filled (default: the row's),
        `guess`: the token drafted there."""
        scores = row.sampler.scores(logits, row.generated)
        token = row.sampler.pick(scores)
        if token == guess:  # counted before `on_token`, which may send the last chunk
            row.out.accepted_draft_tokens += 1
        top = row.params.logprobs
        logprob = None if top is None else logprob_of(scores[0], token, top)
        feed = row.out.on_token(token, row.pos if used is None else used, logprob)
        if not row.out.finished:
            row.feed = feed
            if row.drafter is not None:
                row.drafter.extend(feed)

    def _finish(self, row: _Row, reason: FinishReason, *, error: str | None = None) -> None:
        row.out.finish(reason, error=error)


def _select(cache: DynamicCache, index: torch.Tensor) -> None:
    """Keep the rows `index` of every layer (a recurrent layer's states included)."""
    for layer in cache.layers:
        if isinstance(layer, LinearAttentionLayer):
            layer.reorder_cache(index)
        else:
            layer.batch_select_indices(index)


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
