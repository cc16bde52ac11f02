"""Faces: found by a detector whose weights ship inside its package (:mod:`workers.faces.detect`: MTCNN from
facenet-pytorch), each redrawn in a crop at the Main model's native size and blended back
(:mod:`workers.faces.redraw`), by the pure geometry of :mod:`workers.faces.geometry` (crop, feathered blend mask
that never touches kept pixels, paste-back). Used after a generation (the model's ``faces:``, the request's
``FaceRefine``) and by RestoreFaces; docs/faces.md.
"""
