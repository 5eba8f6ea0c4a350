"""Robust-ResNet models, registered with timm on import."""
