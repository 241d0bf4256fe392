"""LoRA fine-tuning with peft and trl's `SFTTrainer`, on the checkpoint qwenkit serves.

A GGUF base is the dequantized checkpoint the transformers engine already caches
(`convert_gguf`), so the adapter learns against the very weights llama.cpp will apply it to.
The data is encoded by `qwenkit.tune.encode` (qwenkit's own template and loss mask) and handed
to trl already tokenized, with `labels` set to -100 outside the mask.

Layout of `--out DIR`: `checkpoints/checkpoint-N/` (trainer state, for resuming), `adapter/`
(the peft adapter and `qwenkit-tune.json` naming its base), `log.jsonl` (train and held-out loss
every `eval_every` steps) and `loss.png`.
"""

from __future__ import annotations

import json
import logging
import signal
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from qwenkit.chat.template import ChatTemplate, load_template
from qwenkit.errors import QwenkitError
from qwenkit.tune.data import Example, load_jsonl, split_held_out
from qwenkit.tune.encode import EncodedSet, encode_all
from qwenkit.tune.hardware import Plan, plan

log = logging.getLogger("qwenkit.tune")

ADAPTER_INFO = "qwenkit-tune.json"


@dataclass(frozen=True)
class TuneSettings:
    """LoRA and optimisation settings. Defaults: all linear layers, rank 16, alpha 32, lr 2e-4
    (a LoRA rate; trl's own default of 2e-5 is for full fine-tuning)."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 1
    grad_accum: int = 1
    max_length: int = 1024
    eval_every: int = 10
    save_every: int = 50
    held_out: float = 0.1  # share of the data held out when no eval file is given
    seed: int = 0
    dtype: str = "auto"
    gradient_checkpointing: bool | None = None  # None: only when memory needs it
    qlora: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0:
            raise QwenkitError("LoRA rank must be >= 1 and alpha > 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise QwenkitError("--max-steps must be at least 1")
        if self.epochs <= 0 or self.learning_rate <= 0 or self.max_length < 8:
            raise QwenkitError("epochs and learning rate must be positive, max length at least 8")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise QwenkitError(f"unknown dtype {self.dtype!r} (auto, float32, bfloat16 or float16)")


@dataclass
class Base:
    """The model to adapt: its reference, the file qwenkit serves, and the checkpoint trained on."""

    ref: str
    name: str
    source: Path  # the GGUF file or checkpoint directory the reference resolves to
    checkpoint: Path  # a transformers checkpoint directory (the dequantized GGUF for a GGUF)


def resolve_base(ref: str) -> Base:
    """The base model for `ref`, a GGUF dequantized once into a cached checkpoint."""
    from qwenkit.catalog.fetch import resolve
    from qwenkit.engines.transformers.convert import convert_gguf

    local = resolve(ref)
    checkpoint = convert_gguf(local.path) if local.format == "gguf" else local.path
    return Base(ref, local.name, local.path, checkpoint)


def template_of(tokenizer: Any, config: Any, name: str) -> ChatTemplate:
    """The template qwenkit serves this checkpoint with (as `qwenkit.load` picks it)."""
    source = getattr(tokenizer, "chat_template", None)
    if isinstance(source, dict):
        source = source.get("default") or next(iter(source.values()), None)
    return load_template(source, architecture=getattr(config, "model_type", None), name_hint=name)


def load_for_training(base: Base, settings: TuneSettings, execution: Plan) -> tuple[Any, Any]:
    """(model, tokenizer) ready for peft: no leftover quantization config, `architectures` set."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": getattr(torch, execution.dtype)}
    if execution.quantize_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=kwargs["dtype"]
        )
        kwargs["device_map"] = "auto"
    tokenizer = AutoTokenizer.from_pretrained(str(base.checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(base.checkpoint), **kwargs)
    if not execution.quantize_4bit:
        # a config that came from a GGUF says `quantization_config: gguf`, which stops trl's trainer
        model.hf_quantizer = None
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
    if not getattr(model.config, "architectures", None):
        model.config.architectures = [type(model).__name__]
    if execution.device == "cuda" and not execution.quantize_4bit:
        model.to("cuda")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = "<|endoftext|>"
    return model, tokenizer


class Interrupt:
    """The first Ctrl-C asks the trainer to save and stop after this step; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> Interrupt:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class RunCallback(TrainerCallback):
    """Progress bar (loss, tokens/s, ETA), the loss log, and stopping on Ctrl-C."""

    def __init__(self, console: Console, log_path: Path, interrupt: Interrupt) -> None:
        self.console = console
        self.log_path = log_path
        self.interrupt = interrupt
        self.tokens_at_start = 0
        self.tokens = 0
        self.progress: Progress | None = None
        self.task: Any = None
        self.started = time.monotonic()
        self.loss: float | None = None
        self.eval_loss: float | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.started = time.monotonic()
        self.tokens_at_start = self.tokens = state.num_input_tokens_seen
        self.progress = Progress(
            TextColumn("[bold]tune"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  held-out {task.fields[eval]}  {task.fields[tps]} tok/s"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task("tune", total=state.max_steps, completed=state.global_step, **self._fields())

    def _fields(self) -> dict[str, Any]:  # rich's task fields (passed as **kwargs)
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "loss": "-" if self.loss is None else f"{self.loss:.3f}",
            "eval": "-" if self.eval_loss is None else f"{self.eval_loss:.3f}",
            "tps": f"{(self.tokens - self.tokens_at_start) / elapsed:.1f}",
        }

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.tokens = state.num_input_tokens_seen
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, **self._fields())
        if self.interrupt.requested:
            control.should_save = True
            control.should_training_stop = True

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        logs = logs or {}
        record: dict[str, Any] = {"step": state.global_step}
        if "loss" in logs:
            self.loss = record["train_loss"] = float(logs["loss"])
        if "eval_loss" in logs:
            self.eval_loss = record["eval_loss"] = float(logs["eval_loss"])
        if len(record) > 1:
            record["tokens_per_s"] = float(self._fields()["tps"])
            with self.log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if self.progress is not None:
            self.progress.update(self.task, **self._fields())

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


@dataclass
class TuneResult:
    """What a run produced."""

    adapter: Path
    steps: int
    interrupted: bool
    resumed_from: Path | None
    plan: Plan
    train: EncodedSet
    held_out: EncodedSet | None
    log: Path
    records: list[dict[str, Any]] = field(default_factory=list)


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _dataset(encoded: EncodedSet) -> Any:
    from datasets import Dataset

    rows = [
        {"input_ids": s.input_ids, "labels": [t if m else -100 for t, m in zip(s.input_ids, s.mask, strict=True)]}
        for s in encoded.sequences
    ]
    return Dataset.from_list(rows)


def read_data(
    train_path: Path, eval_path: Path | None, settings: TuneSettings
) -> tuple[list[Example], list[Example] | None]:
    """Training rows and held-out rows (a file, or a seeded share of the training rows)."""
    train_rows = load_jsonl(train_path)
    if eval_path is not None:
        return train_rows, load_jsonl(eval_path)
    if settings.held_out > 0 and len(train_rows) > 1:
        return split_held_out(train_rows, settings.held_out, settings.seed)
    return train_rows, None


def encode_data(
    rows: tuple[list[Example], list[Example] | None], settings: TuneSettings, template: ChatTemplate, tokenize: Any
) -> tuple[EncodedSet, EncodedSet | None]:
    """Encode the training and held-out rows, refusing a run with nothing to train on."""
    train_rows, held_rows = rows
    try:
        train = encode_all(train_rows, template, tokenize, max_length=settings.max_length)
        held = encode_all(held_rows, template, tokenize, max_length=settings.max_length) if held_rows else None
    except ValueError as exc:
        raise QwenkitError(f"cannot render the data with this model's template: {exc}") from None
    if not train.sequences:
        raise QwenkitError(f"no training sequence left within --max-length {settings.max_length}")
    return train, held if held and held.sequences else None


def tune(
    base: Base,
    train_path: Path,
    out: Path,
    settings: TuneSettings,
    *,
    eval_path: Path | None = None,
    console: Console | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> TuneResult:
    """Train a LoRA adapter on `train_path`; continues from `out`'s last checkpoint if there is one.

    The first Ctrl-C (SIGINT) stops after the current step with a checkpoint and the adapter saved.
    """
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoConfig
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_utils import get_last_checkpoint
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    console = console or Console(stderr=True)
    rows = read_data(train_path, eval_path, settings)  # bad rows are reported before the model loads
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    config = AutoConfig.from_pretrained(str(base.checkpoint))
    execution = plan(
        config,
        tokens_per_step=settings.batch_size * settings.max_length,
        dtype=settings.dtype,
        gradient_checkpointing=settings.gradient_checkpointing,
        qlora=settings.qlora,
    )
    model, tokenizer = load_for_training(base, settings, execution)
    template = template_of(tokenizer, model.config, base.name)

    def tokenize(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    train, held = encode_data(rows, settings, template, tokenize)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / "checkpoints"
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    log_path = out / "log.jsonl"
    if last is None and log_path.exists():
        log_path.unlink()  # a fresh run: the old curve does not continue
    args = SFTConfig(
        output_dir=str(checkpoints),
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=max(settings.batch_size, 4),
        gradient_accumulation_steps=settings.grad_accum,
        activation_checkpointing=execution.gradient_checkpointing,
        include_num_input_tokens_seen="non_padding",
        bf16=execution.dtype == "bfloat16",
        fp16=execution.dtype == "float16",
        use_cpu=execution.device == "cpu",
        logging_steps=settings.eval_every,
        eval_strategy="steps" if held else "no",
        eval_steps=settings.eval_every if held else None,
        eval_on_start=held is not None and last is None,
        save_strategy="steps",
        save_steps=settings.save_every,
        save_total_limit=2,
        seed=settings.seed,
        max_length=settings.max_length,
        report_to=[],
        disable_tqdm=True,
        warmup_steps=0,
        lr_scheduler_type="linear",
    )
    lora = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    with Interrupt() as interrupt:
        callback = RunCallback(console, log_path, interrupt)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=_dataset(train),
            eval_dataset=_dataset(held) if held else None,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[callback, *callbacks],
        )
        trainer.remove_callback(PrinterCallback)  # the progress bar and log.jsonl report instead
        console.print(
            f"[dim]{base.name}: {len(train.sequences)} training sequences ({train.n_tokens} tokens)"
            + (f", {len(held.sequences)} held out" if held else "")
            + f"; {execution.reason}"
            + (f"; resuming from {Path(last).name}" if last else "")
            + "[/]"
        )
        trainer.train(resume_from_checkpoint=last)
    adapter = out / "adapter"
    trainer.model.save_pretrained(str(adapter))
    info = {"base": base.ref, "base_name": base.name, "base_path": str(base.source), "settings": asdict(settings)}
    (adapter / ADAPTER_INFO).write_text(json.dumps(info, indent=1), encoding="utf-8")
    return TuneResult(
        adapter=adapter,
        steps=trainer.state.global_step,
        interrupted=interrupt.requested,
        resumed_from=Path(last) if last else None,
        plan=execution,
        train=train,
        held_out=held,
        log=log_path,
        records=read_log(log_path),
    )
