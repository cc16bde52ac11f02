"""TranslatePrompts: language detection (``detect.py``, no model) and a local translation model
(``translator.py``, transformers imported on load)."""
