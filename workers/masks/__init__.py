"""The mask engines (RemoveBackground, ExtractContents, the clothes segmenter of GenerateFromMannequin):
``engines.py`` runs each kind of model, ``refine.py`` turns a raw mask into the answer's (pure functions)."""
