"""Building and measuring the offline testbed dual encoder (see :mod:`clipforget.models.testbed`).

- :mod:`.names`: ImageNet class names (from the timm wheel), the pretraining/evaluation image sets.
- :mod:`.features`: frozen-tower features, cached on disk by a content hash.
- :mod:`.bridge`: the text -> classifier ridge bridge that initialises the heads (pure tensors).
- :mod:`.pretrain`: contrastive training of the heads (``python -m clipforget.app.testbed.pretrain``).
- :mod:`.evaluate`: zero-shot vs linear-probe table (``python -m clipforget.app.testbed.evaluate``).
"""
