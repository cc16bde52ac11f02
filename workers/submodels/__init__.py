"""Submodels (SubModelList): LoRAs, textual-inversion embeddings and A1111 hypernetworks applied to a warm
base pipeline for one job and removed without a trace.

    from workers.submodels.apply import apply_submodels
    from workers.submodels.spec import SubModelSpec, build_prompt

    prompt = build_prompt([user_prompt], main_words + [w for s in specs for w in s.trigger_words])
    with apply_submodels(pipe, specs, read):      # read(spec): the parsed file, from the worker's model cache
        images = run_inpaint(pipe, comp, prompt, ...)
    # here the pipeline is exactly the base again, also after an exception

``spec.py`` (what a job asks for, ``SubmodelError``, ``SubmodelKind``, ``build_prompt``) imports no torch;
``apply.py``, ``kinds.py`` and the format modules (``lora.py``, ``embedding.py``, ``hypernetwork.py``,
``files.py``) do. Each kind's module ends with its ``SubmodelKind`` (how it is read, cached, checked, applied
and undone, and its order); ``kinds.py`` registers each in one line, and ``apply.py`` names no kind.
"""
