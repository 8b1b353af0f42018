"""Models registered by recbole_semprune (resolved before RecBole's by ``get_model``)."""

from recbole_semprune.model.decoder_only import DecoderOnlySID
from recbole_semprune.model.rastp import RASTP
from recbole_semprune.model.rec2pm import Rec2PM
from recbole_semprune.model.stamp import STAMPSID
from recbole_semprune.model.tiger import TIGER

__all__ = ["DecoderOnlySID", "RASTP", "Rec2PM", "STAMPSID", "TIGER"]
