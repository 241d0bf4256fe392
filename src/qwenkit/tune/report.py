"""Proof that a fine-tune worked, in one run (`qwenkit tune ... --report`).

On the held-out conversations (each scored against its last assistant turn: exact match, JSON
compared as parsed values), greedy, as served:
- the score of the base GGUF before and of the base GGUF + the GGUF LoRA after, on llama.cpp;
- the stop rate: the share of answers that end with `<|im_end|>` before `max_tokens`;
- greedy agreement between peft (transformers, the trained adapter itself), the GGUF LoRA on
  llama.cpp and, when llama-quantize is at hand, the merged GGUF (merged in float32, quantized).
Written to `report.json` and `report.md` beside the loss curves.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qwenkit.errors import QwenkitError
from qwenkit.tune.data import ChatExample, Example
from qwenkit.tune.trainer import Base

ADAPTER_NAME = "tuned"


@dataclass
class Report:
    prompts: int
    score_before: float
    score_after: float
    stop_rate_after: float
    agreement_peft_gguf: float
    score_peft: float
    merged: str  # the merged GGUF's file, or why there is none
    agreement_merged_gguf: float | None = None
    score_merged: float | None = None
    samples: list[dict[str, str]] = field(default_factory=list)


def same_answer(produced: str, expected: str) -> bool:
    """Exact match, JSON compared as parsed values (key order and spacing do not count)."""
    produced, expected = produced.strip(), expected.strip()
    try:
        return bool(json.loads(produced) == json.loads(expected))
    except ValueError:
        return produced == expected


def cases(examples: Sequence[Example]) -> list[tuple[list[dict[str, Any]], str]]:
    """(conversation before the last assistant turn, that turn's content) per chat example."""
    out = []
    for example in examples:
        if isinstance(example, ChatExample):
            last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
            out.append((example.messages[:last], example.messages[last]["content"]))
    return out


def _share(flags: Sequence[bool]) -> float:
    return round(sum(flags) / len(flags), 3) if flags else 0.0


def _peft_greedy(
    base: Base, adapter: Path, prompts: Sequence[list[int]], max_tokens: int, stop: Sequence[int]
) -> list[str]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base.checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(base.checkpoint), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    texts = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=list(stop),
                pad_token_id=stop[0],
            )
            texts.append(tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True))
    return texts


def build_report(
    base: Base,
    adapter: Path,
    held_out: Sequence[Example],
    out: Path,
    *,
    max_tokens: int = 64,
    merged: bool = True,
    threads: int | None = None,
) -> Report:
    """Score, stop rate and agreement on `held_out` (see the module docstring); writes the files."""
    from qwenkit.api import load
    from qwenkit.tune.export import export_lora, export_merged

    if base.source.suffix != ".gguf":
        raise QwenkitError("--report compares llama.cpp runs: it needs a GGUF base model")
    todo = cases(held_out)
    if not todo:
        raise QwenkitError("--report needs held-out chat examples (--eval, or --held-out > 0)")
    lora = export_lora(adapter, out / "adapter.gguf", model=str(base.source))
    conversations = [c for c, _ in todo]
    greedy: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0.0}
    with load(
        str(base.source), lora={ADAPTER_NAME: lora}, n_parallel=4, n_ctx=2048, n_threads=threads, progress=False
    ) as m:
        before = m.batch(conversations, **greedy)
        after = m.batch(conversations, adapters=((ADAPTER_NAME, 1.0),), **greedy)
        prompts = [m.prepare(c, **greedy).prompt for c in conversations]
        stop = sorted(m.engine.eos_token_ids())
    stop = [t for t in stop if t in (151645, 151643)] or stop
    peft_texts = _peft_greedy(base, adapter, prompts, max_tokens, stop)
    expected = [e for _, e in todo]
    report = Report(
        prompts=len(todo),
        score_before=_share([same_answer(r.content, e) for r, e in zip(before, expected, strict=True)]),
        score_after=_share([same_answer(r.content, e) for r, e in zip(after, expected, strict=True)]),
        stop_rate_after=_share([r.finish_reason == "stop" for r in after]),
        agreement_peft_gguf=_share([p.strip() == r.content.strip() for p, r in zip(peft_texts, after, strict=True)]),
        score_peft=_share([same_answer(p, e) for p, e in zip(peft_texts, expected, strict=True)]),
        merged="not asked",
        samples=[
            {"prompt": c[-1]["content"], "expected": e, "before": b.content, "after": a.content}
            for c, e, b, a in list(zip(conversations, expected, before, after, strict=True))[:3]
        ],
    )
    if merged:
        try:
            merged_file = export_merged(adapter, out / "merged-q4_k_m.gguf", model=str(base.source))
        except QwenkitError as exc:
            report.merged = f"skipped: {exc}"
        else:
            report.merged = str(merged_file)
            with load(str(merged_file), n_parallel=4, n_ctx=2048, n_threads=threads, progress=False) as mm:
                merged_out = mm.batch(conversations, **greedy)
            report.agreement_merged_gguf = _share(
                [x.content.strip() == r.content.strip() for x, r in zip(merged_out, after, strict=True)]
            )
            report.score_merged = _share([same_answer(x.content, e) for x, e in zip(merged_out, expected, strict=True)])
    (out / "report.json").write_text(json.dumps(asdict(report), indent=1), encoding="utf-8")
    (out / "report.md").write_text(markdown(report, base.name), encoding="utf-8")
    return report


def markdown(report: Report, base_name: str) -> str:
    """The report as a Markdown table (what BENCHMARKS.md quotes)."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.0f}%"

    rows = [
        ("held-out score, base GGUF (before)", pct(report.score_before)),
        ("held-out score, base GGUF + GGUF LoRA (after)", pct(report.score_after)),
        ("held-out score, peft adapter (transformers)", pct(report.score_peft)),
        ("held-out score, merged GGUF (q4_k_m)", pct(report.score_merged)),
        ("answers ending with <|im_end|> before max_tokens (after)", pct(report.stop_rate_after)),
        ("greedy agreement peft vs GGUF + LoRA", pct(report.agreement_peft_gguf)),
        ("greedy agreement merged GGUF vs GGUF + LoRA", pct(report.agreement_merged_gguf)),
    ]
    lines = [f"LoRA report on {base_name}, {report.prompts} held-out prompts, greedy", "", "| measure | value |"]
    lines += ["|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    if report.merged and not report.merged.endswith(".gguf"):
        lines += ["", f"merged GGUF: {report.merged}"]
    return "\n".join(lines) + "\n"
