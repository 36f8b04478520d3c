"""Application 3: classify and synthesise data with SAE features (Qwen-Scope section 5)."""
