"""Wire parsing in the gateway: the field rules (``fields.py``), the images (``images.py``) and one
module per action body that needs more than a field or two (``generate.py``)."""
