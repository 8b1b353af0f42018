"""recbole-semprune: semantic-ID generative recommendation for RecBole, made cheap to train and serve."""

from recbole_semprune import compat

compat.apply()

__version__ = "0.1.0"
