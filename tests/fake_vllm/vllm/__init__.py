"""A small in-test engine with the part of vLLM's offline API that SEAL uses (names and signatures as in
vLLM's documentation: `LLM(model, ..., enable_lora, max_lora_rank, max_loras)`, `LLM.generate(prompts,
sampling_params, *, use_tqdm, lora_request)`, `SamplingParams(n, temperature, top_p, max_tokens, seed,
stop)`, `RequestOutput.outputs[i].text`), backed by transformers and peft so its answers can be compared."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

CALLS: list[dict[str, Any]] = []


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    seed: int | None = None
    stop: list[str] | str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str


@dataclass
class RequestOutput:
    prompt: str
    outputs: list[CompletionOutput] = field(default_factory=list)


class LLM:
    def __init__(self, model: str, *, seed: int = 0, enable_lora: bool = False, max_lora_rank: int = 16,
                 max_loras: int = 1, **engine_args: Any):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path, self.enable_lora, self.max_lora_rank = model, enable_lora, max_lora_rank
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.adapters: dict[int, Any] = {}
        CALLS.append({"init": model, "enable_lora": enable_lora, "engine_args": engine_args})

    def _model_for(self, request):
        if request is None:
            return self.model
        if not self.enable_lora:
            raise ValueError("LoRA request but the engine was built without enable_lora")
        if request.lora_int_id not in self.adapters:
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            base = AutoModelForCausalLM.from_pretrained(self.path)
            peft = PeftModel.from_pretrained(base, request.lora_path).eval()
            if peft.peft_config["default"].r > self.max_lora_rank:
                raise ValueError("adapter rank above max_lora_rank")
            self.adapters[request.lora_int_id] = peft
        return self.adapters[request.lora_int_id]

    @torch.no_grad()
    def generate(self, prompts: str | Sequence[str],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 *, use_tqdm: bool = True, lora_request=None) -> list[RequestOutput]:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        params = (sampling_params if isinstance(sampling_params, (list, tuple))
                  else [sampling_params or SamplingParams()] * len(prompts))
        loras = lora_request if isinstance(lora_request, (list, tuple)) else [lora_request] * len(prompts)
        assert len(params) == len(prompts) == len(loras)
        CALLS.append({"generate": len(prompts), "loras": [r.lora_int_id if r else None for r in loras]})
        out = []
        for prompt, sp, lora in zip(prompts, params, loras):
            model = self._model_for(lora)
            enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            texts = []
            for i in range(sp.n):
                kwargs: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
                if sp.temperature > 0:
                    torch.manual_seed((sp.seed or 0) * 1000 + i)
                    kwargs = {"do_sample": True, "temperature": sp.temperature, "top_p": sp.top_p, "top_k": None}
                ids = model.generate(**enc, max_new_tokens=sp.max_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                     **kwargs)
                text = self.tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                for stop in ([sp.stop] if isinstance(sp.stop, str) else sp.stop or []):
                    text = text.split(stop)[0]
                texts.append(text)
            out.append(RequestOutput(prompt, [CompletionOutput(i, t) for i, t in enumerate(texts)]))
        return out
