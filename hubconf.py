"""torch.hub entry point: ``torch.hub.load(repo_dir, "hacnn", source="local", ...)``."""
dependencies = ["torch", "torchvision"]


def hacnn(num_classes: int = 751, weights: str | None = None, **config):
    """HA-CNN (Li, Zhu & Gong, CVPR 2018).

    Args:
        num_classes: identities of the classifiers (Market-1501: 751); ignored for
            reference weights, which keep their own.
        weights: optional. The name of reference weights shipped with the package
            (``"synthetic-full"``, ``"synthetic-global-only"``: :func:`hacnn.pretrained` of :mod:`hacnn.zoo`,
            loaded with ``weights_only=True``, eval mode), or a path to a hacnn or
            torchreid checkpoint. Nothing is downloaded.
        **config: overrides of :class:`hacnn.HACNNConfig` fields (not with reference weights).
    """
    from hacnn.checkpoint import load_model
    from hacnn.model import HACNN
    from hacnn.zoo import REFERENCE_WEIGHTS, pretrained

    if weights is None:
        return HACNN(num_classes, **config)
    if weights in REFERENCE_WEIGHTS:
        if config:
            raise ValueError(f"reference weights {weights!r} have their own config; got overrides {config}")
        return pretrained(weights)
    return load_model(weights, num_classes=num_classes, **config)
