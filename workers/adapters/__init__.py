"""Adapters: ControlModels that are not ControlNets (``adapter:`` in models_config/; docs/API.md "IP-Adapter units").

* :mod:`workers.adapters.files`: an IP-Adapter file in the published layouts (``image_proj.*``,
  ``ip_adapter.<n>.to_k_ip.weight`` ...), read and recognised (plain, plus / plus-face, full-face); pure torch.
* :mod:`workers.adapters.encoder`: the CLIP vision encoder an adapter reads its reference through, and the
  reference's embeddings (:class:`~workers.adapters.encoder.ReferenceEmbeds`), cached by the image's content hash.
* :mod:`workers.adapters.ip_adapter`: an adapter file made into modules on the device
  (:class:`~workers.adapters.ip_adapter.LoadedAdapter`, one cached copy per file), and
  :func:`~workers.adapters.ip_adapter.adapters_applied`: a job's units put on a warm pipeline and taken off again,
  bit for bit.

Where a unit's reference embeddings come from is the job's choice (:func:`workers.jobs.generate` reads the unit's
image through the encoder): a face embedding or a stored persona gives a
:class:`~workers.adapters.encoder.ReferenceEmbeds` all the same.
"""
