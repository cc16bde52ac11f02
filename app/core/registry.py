"""The model registry: what a deployment serves, from ``models_config/*.yaml``.

Each entry maps a ModelCode to its ModelType (Main, LoRA, Embedding, HyperNetwork), family, source
and defaults; ListModels is generated from it and the gateway refuses unknown codes (240) before
anything is queued. See models_config/README.md for the format.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

ModelType = Literal["Main", "LoRA", "Embedding", "HyperNetwork"]


class ModelSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    demo: Literal["inpaint", "sd15"] | None = Field(None, description="generated locally on first use")
    path: Path | None = Field(None, description="a local diffusers folder (relative to the config file)")

    @model_validator(mode="after")
    def _one(self) -> ModelSource:
        if (self.demo is None) == (self.path is None):
            raise ValueError("source needs exactly one of: demo, path")
        return self


class ModelDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(25, ge=1, le=150)
    guidance_scale: float = Field(7.0, ge=0, le=30)


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    model_code: str = Field(alias="ModelCode", min_length=1)
    name: str = Field(alias="Name")
    model_type: ModelType = Field(alias="ModelType")
    is_official: bool = Field(True, alias="IsOfficial")
    trigger_words: list[str] = Field(default_factory=list, alias="TriggerWordList")
    family: str = "sd15"
    source: ModelSource
    defaults: ModelDefaults = Field(default_factory=ModelDefaults)

    def to_wire(self) -> dict[str, Any]:
        """The PICPIK ``Model`` object plus ``ModelType``."""
        return {"Name": self.name, "ModelCode": self.model_code, "IsOfficial": self.is_official,
                "TriggerWordList": list(self.trigger_words), "InferenceParams": {},
                "ModelType": self.model_type}


class Registry:
    def __init__(self, entries: list[ModelEntry], base_dir: Path):
        self.base_dir = base_dir
        self._by_code: dict[str, ModelEntry] = {}
        for e in entries:
            if e.model_code in self._by_code:
                raise ValueError(f"duplicate ModelCode {e.model_code!r}")
            self._by_code[e.model_code] = e

    def get(self, code: str) -> ModelEntry | None:
        return self._by_code.get(code)

    def entries(self) -> list[ModelEntry]:
        return list(self._by_code.values())

    def resolve_path(self, entry: ModelEntry) -> Path | None:
        p = entry.source.path
        if p is None:
            return None
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    @classmethod
    def from_file(cls, path: Path) -> Registry:
        doc = yaml.safe_load(path.read_text()) or {}
        try:
            entries = [ModelEntry.model_validate(m) for m in doc.get("models") or []]
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        return cls(entries, path.parent.resolve())


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> Registry:
    return Registry.from_file(Path(path))


def get_registry(path: Path) -> Registry:
    """The registry at ``path``, re-read when the file changes."""
    return _load(str(path), path.stat().st_mtime)
