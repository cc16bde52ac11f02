"""The only code the gateway and the workers share: the facts of the wire (``limits.py``, ``codes.py``),
the job message and task statuses (``jobs.py``), the Redis task store, file storage, the model registry
(``models_config/``), the settings and the Celery configuration. Nothing here imports torch, diffusers or
transformers, nor anything else of ``app`` (tests/contract/test_light_imports.py and test_layout.py check it)."""
