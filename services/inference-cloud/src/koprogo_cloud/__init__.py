"""KoproGo Symbiose cloud inference: RunInference work answered by provider SDKs (Anthropic, OpenAI, Mistral)."""
