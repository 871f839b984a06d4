"""Model builders shared by the tools: the layout-independent tiny megatron-core GPT (:mod:`.tiny_gpt`).

The benchmarks, the robustness study and the invariance tests all build their model here.
"""
