"""The output head of the SID models: one linear map onto the codes of every level, read as a
softmax over one level's codes at a time.

It is a :class:`torch.nn.Linear` (its weight is the model's ``output.weight``) that also knows
the level layout of the codes: code ``c`` of level ``l`` is row ``offset[l] + c``.
"""

import torch
import torch.nn.functional as F
from torch import nn


class CodeHead(nn.Linear):
    """Scores ``[..., sum(level_sizes)]`` of hidden states ``[..., d]``, no bias."""

    def __init__(self, hidden_size, level_sizes):
        super().__init__(hidden_size, sum(level_sizes), bias=False)
        self.level_sizes = [int(size) for size in level_sizes]
        self.level_starts = [sum(self.level_sizes[:level]) for level in range(len(level_sizes))]
        levels = torch.repeat_interleave(torch.arange(len(level_sizes)), torch.tensor(self.level_sizes))
        self.register_buffer("code_level", levels, persistent=False)

    def level_log_probs(self, hidden, level):
        """Log-probabilities ``[..., level_sizes[level]]`` of the codes of one level."""
        start = self.level_starts[level]
        weight = self.weight[start : start + self.level_sizes[level]]
        return F.log_softmax(hidden @ weight.t(), dim=-1)

    def token_log_probs(self, hidden, next_tokens):
        """Log-probability of each next token ``[...]`` (token ``1 + code row``) predicted by
        ``hidden`` ``[..., d]``, a softmax over its own level's codes; positions whose next
        token is padding get a meaningless value and must be masked by the caller."""
        code = (next_tokens - 1).clamp(min=0)
        level = self.code_level[code]
        logits = self(hidden).masked_fill(self.code_level != level.unsqueeze(-1), float("-inf"))
        return logits.log_softmax(-1).gather(-1, code.unsqueeze(-1)).squeeze(-1)
