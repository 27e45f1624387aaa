"""Features of a frozen backbone: backbones, the content-addressed cache, pair featurisation."""
