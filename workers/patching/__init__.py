"""What patches a loaded pipeline in place, below the rooms that use it: ``models/`` applies it at load,
``inference/`` before each call, ``submodels/`` around a job. It imports none of them (tests/contract/test_layout.py).

``attention.py`` the attention processors (SDPA or classic), fused q/k/v sharing the separate layers' storage,
and the separate projections a hypernetwork needs; ``deepcache.py`` the DeepCache feature cache on a UNet;
``per_call.py`` where a Main model's ``speed:`` options are recorded on its pipeline and what they do before
each pipeline call (VAE tiling and slicing, images per call, the DeepCache reset).
"""
