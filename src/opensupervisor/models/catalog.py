"""The model catalog: workspace entries become ``Model`` instances, built once and shared."""

from __future__ import annotations

from pathlib import Path
from typing import assert_never

from opensupervisor import outbound
from opensupervisor.core.contracts import Model
from opensupervisor.errors import ConfigError, NotFound
from opensupervisor.models.fallback import FallbackModel
from opensupervisor.models.scripted import ScriptedModel, parse_script
from opensupervisor.workspace import ModelEntry, Workspace


def build_model(name: str, entry: ModelEntry, base_dir: Path) -> Model:
    model = _build(name, entry, base_dir)
    model.provider = entry.provider
    model.context_window = entry.context_window or model.context_window
    model.defaults = entry.defaults.model_dump(exclude_none=True)
    model.max_output_tokens = entry.max_output_tokens
    model.max_output_chars = entry.max_output_chars
    return model


def _build(name: str, entry: ModelEntry, base_dir: Path) -> Model:
    provider = entry.provider
    if entry.base_url is not None:
        try:
            entry = entry.model_copy(update={"base_url": outbound.parse_url(entry.base_url).geturl()})
        except outbound.UrlRefused as exc:  # never the URL itself: it may hold credentials
            raise ConfigError(f"model '{name}': base_url is refused: {exc}", param="base_url",
                              code="url_not_allowed") from exc
    if provider == "embedded":
        # Imported here: loading llama.cpp is only worth it when a workspace uses it.
        from opensupervisor.models.embedded import EmbeddedModel

        path = str(base_dir / entry.model_path) if entry.model_path else None
        return EmbeddedModel(name, model_path=path, context_window=entry.context_window, threads=entry.threads)
    if provider == "scripted":
        return ScriptedModel(name, parse_script(name, entry.script))
    if provider == "anthropic":
        from opensupervisor.models.anthropic import AnthropicModel

        if not entry.upstream_model:
            raise ConfigError(f"model '{name}': provider anthropic needs upstream_model (e.g. claude-sonnet-4-5)")
        return AnthropicModel(name, upstream_model=entry.upstream_model, api_key_env=entry.api_key_env,
                              base_url=entry.base_url, timeout_s=entry.timeout_s, max_retries=entry.max_retries)
    if provider == "openai-chat" or provider == "openai-responses":  # == (not "in"): mypy narrows it
        if not entry.base_url or not entry.upstream_model:
            raise ConfigError(f"model '{name}': provider {provider} needs base_url and upstream_model")
        # Imported here, with their HTTP client (aiohttp): only a workspace with upstreams needs them.
        from opensupervisor.models.openai_chat import OpenAIChatModel
        from opensupervisor.models.openai_responses import OpenAIResponsesModel

        adapter = OpenAIChatModel if provider == "openai-chat" else OpenAIResponsesModel
        return adapter(name, base_url=entry.base_url, upstream_model=entry.upstream_model,
                       api_key_env=entry.api_key_env, timeout_s=entry.timeout_s, max_retries=entry.max_retries)
    assert_never(provider)


class ModelCatalog:
    def __init__(self, workspace: Workspace) -> None:
        self.entries = workspace.models
        self._plain = {name: build_model(name, entry, workspace.base_dir) for name, entry in workspace.models.items()}
        self._models: dict[str, Model] = {
            name: FallbackModel(model, [self._plain[f] for f in self.entries[name].fallbacks])
            if self.entries[name].fallbacks else model
            for name, model in self._plain.items()
        }

    def get(self, name: str) -> Model:
        model = self._models.get(name)
        if model is None:
            raise NotFound(f"The model '{name}' does not exist in this workspace.", param="model",
                           code="model_not_found")
        return model

    def names(self) -> list[str]:
        """The catalog's model names, in the workspace file's order."""
        return list(self._models)

    async def aclose(self) -> None:
        for model in self._plain.values():
            await model.aclose()
