class VLLMValidationError(Exception):
    """vllm/exceptions.py: a request parameter out of range (through VLLMClientError and VLLMError, not a
    ValueError since vLLM 0.2x)."""
