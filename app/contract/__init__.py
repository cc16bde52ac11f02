"""Light modules shared by the gateway and the workers: settings, the job/task contract, the Redis
task store, file storage and the model registry. Nothing here imports torch, diffusers or
transformers (tests/test_light_imports.py checks it in a subprocess)."""
