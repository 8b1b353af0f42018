"""Models registered by recbole_semprune (resolved before RecBole's by ``get_model``)."""

__all__ = []
