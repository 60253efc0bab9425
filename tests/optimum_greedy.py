"""Greedy ids from optimum's `ORTModelForCausalLM`, loading an export folder as it is.

Runs in `.venv-optimum` (optimum-onnx pins an older transformers than the suite's; `.ci/run`
builds that environment): `python tests/optimum_greedy.py FOLDER NEW_TOKENS ID [ID ...]` prints
the greedy continuation's ids as JSON.
"""

import json
import sys

import torch
from optimum.onnxruntime import ORTModelForCausalLM


def main(folder: str, new_tokens: str, *ids: str) -> None:
    model = ORTModelForCausalLM.from_pretrained(folder)  # a plain load: no file or subfolder named
    prompt = torch.tensor([[int(i) for i in ids]])
    out = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=int(new_tokens), do_sample=False
    )
    print(json.dumps({"generated": out[0, prompt.shape[1] :].tolist(), "graph": str(model.path)}))


if __name__ == "__main__":
    main(*sys.argv[1:])
