class VLLMValidationError(Exception):
    """vllm/exceptions.py: a request parameter out of range; in 0.30.0 through VLLMClientError and VLLMError,
    not a ValueError (it was one in 0.19.1)."""
