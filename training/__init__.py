"""Training and evaluation of the ResNet50 classifier on NIH ChestX-ray14 (Keras).

Uses `shared.images` and `shared.classifier` for decoding and preprocessing so that what is
trained is exactly what is served.
"""
