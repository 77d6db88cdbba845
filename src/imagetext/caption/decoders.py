"""Caption decoders over a frozen image tower's spatial feature map.

Both decoders read the (B, C, H, W) feature map (EfficientNet-Lite0: 1280 x 7 x 7 at
224 px) and share one small protocol, so that training and decoding are written once:

- `encode(fmap) -> memory`: per-image tensors (dict, batch first), computed once per image;
- `forward(memory, inputs) -> (logits, aux_loss)`: teacher forcing over `inputs`
  (B, T) token ids that start with <bos>; logits (B, T, V);
- `init_state(memory) -> state` and `step(state, prefix) -> (log_probs, state)`:
  incremental decoding; `prefix` is (B, t) of the tokens so far (starting with <bos>);
- states and memories are dicts of batch-first tensors, reordered by `select_rows`.

1. `ShowAttendTellDecoder`: Xu et al. 2015 "Show, Attend and Tell": an LSTM (or GRU) with
   additive (Bahdanau) attention over the 49 regions, a gated context, initial state from
   the mean feature and the doubly stochastic attention regulariser.
2. `TransformerCaptionDecoder`: a pre-norm transformer decoder with causal self-attention
   and cross-attention over the 49 regions plus one global (mean-pooled) token. Teacher
   forcing runs `nn.TransformerDecoder`; incremental decoding runs the same layers' weights
   one token at a time with a key/value cache (`step`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imagetext.errors import InvalidInputError

State = dict[str, torch.Tensor]


def select_rows(state: State, index: torch.Tensor) -> State:
    """Reorder/expand every tensor of a state along the batch axis."""
    return {k: v.index_select(0, index) for k, v in state.items()}


class ShowAttendTellDecoder(nn.Module):
    arch = "show-attend-tell"

    # the defaults are the sizes `imagetext train captioner` trains (and the shipped one has)
    def __init__(self, vocab_size: int, feature_dim: int = 1280, embed_dim: int = 256,
                 hidden_dim: int = 512, attention_dim: int = 256, dropout: float = 0.5,
                 cell: str = "lstm", attention_reg: float = 1.0):
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be 'lstm' or 'gru', not {cell!r}")
        self.config = {"vocab_size": vocab_size, "feature_dim": feature_dim, "embed_dim": embed_dim,
                           "hidden_dim": hidden_dim, "attention_dim": attention_dim, "dropout": dropout,
                           "cell": cell, "attention_reg": attention_reg}
        self.cell_type, self.attention_reg = cell, attention_reg
        self.project = nn.Linear(feature_dim, hidden_dim)
        self.att_memory = nn.Linear(hidden_dim, attention_dim)
        self.att_hidden = nn.Linear(hidden_dim, attention_dim)
        self.att_score = nn.Linear(attention_dim, 1)
        self.init_h = nn.Linear(hidden_dim, hidden_dim)
        self.init_c = nn.Linear(hidden_dim, hidden_dim)
        self.gate = nn.Linear(hidden_dim, hidden_dim)
        self.embed = nn.Embedding(vocab_size, embed_dim)
        cell_cls = nn.LSTMCell if cell == "lstm" else nn.GRUCell
        self.cell = cell_cls(embed_dim + hidden_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        # "deep output" (Xu et al. eq. 7): the word depends on h, the context and the input word
        self.out_hidden = nn.Linear(hidden_dim, embed_dim)
        self.out_context = nn.Linear(hidden_dim, embed_dim, bias=False)
        self.out = nn.Linear(embed_dim, vocab_size)

    def encode(self, fmap: torch.Tensor) -> State:
        regions = fmap.flatten(2).transpose(1, 2).float()  # (B, N, C)
        memory = self.dropout(F.relu(self.project(regions)))
        return {"memory": memory, "memory_att": self.att_memory(memory)}

    def init_state(self, memory: State) -> State:
        mean = memory["memory"].mean(1)
        state = dict(memory)
        state["h"] = torch.tanh(self.init_h(mean))
        if self.cell_type == "lstm":
            state["c"] = torch.tanh(self.init_c(mean))
        return state

    def _advance(self, state: State, token: torch.Tensor):
        h = state["h"]
        scores = self.att_score(torch.tanh(state["memory_att"] + self.att_hidden(h).unsqueeze(1)))
        alpha = scores.squeeze(-1).softmax(-1)  # (B, N)
        context = (alpha.unsqueeze(-1) * state["memory"]).sum(1)
        gated = torch.sigmoid(self.gate(h)) * context
        emb = self.embed(token)
        x = torch.cat([emb, gated], -1)
        new = dict(state)
        if self.cell_type == "lstm":
            new["h"], new["c"] = self.cell(x, (h, state["c"]))
        else:
            new["h"] = self.cell(x, h)
        hidden = self.dropout(new["h"])
        # the input of the word classifier; the (large) vocabulary projection is left to the
        # caller, so that teacher forcing runs it once over all steps
        deep = emb + self.out_hidden(hidden) + self.out_context(context)
        return deep, new, alpha

    def forward(self, memory: State, inputs: torch.Tensor, lengths: torch.Tensor | None = None):
        """Teacher forcing. With `lengths` sorted in decreasing order (as the trainer passes
        them), step t only runs the rows still inside their caption, as in Xu et al.'s code:
        no work is spent on padding."""
        state = self.init_state(memory)
        batch, steps = inputs.shape
        if lengths is None:
            lengths = torch.full((batch,), steps)
        elif bool((lengths[1:] > lengths[:-1]).any()):
            raise ValueError("lengths must be sorted in decreasing order")
        deep = inputs.new_zeros((batch, steps, self.out.in_features), dtype=torch.float32)
        attention = inputs.new_zeros((batch, steps, state["memory"].shape[1]), dtype=torch.float32)
        for t in range(steps):
            n = int((lengths > t).sum())
            if n == 0:
                break
            if n < state["h"].shape[0]:
                state = {k: v[:n] for k, v in state.items()}
            step_deep, state, alpha = self._advance(state, inputs[:n, t])
            deep[:n, t] = step_deep
            attention[:n, t] = alpha
        logits = self.out(self.dropout(deep))
        aux = logits.new_zeros(())
        if self.attention_reg and self.training:
            # doubly stochastic attention: every region should get ~1 unit of attention overall
            mask = (torch.arange(steps)[None, :] < lengths[:, None]).float()
            total = (attention * mask.unsqueeze(-1)).sum(1)  # (B, N)
            aux = self.attention_reg * ((mask.sum(1, keepdim=True) / total.shape[1] - total) ** 2).mean()
        return logits, aux

    def step(self, state: State, prefix: torch.Tensor):
        deep, state, _ = self._advance(state, prefix[:, -1])
        return self.out(self.dropout(deep)).float().log_softmax(-1), state


class TransformerCaptionDecoder(nn.Module):
    arch = "transformer"

    # the defaults are the sizes `imagetext train captioner --arch transformer` trains
    def __init__(self, vocab_size: int, feature_dim: int = 1280, d_model: int = 256,
                 layers: int = 3, heads: int = 4, ff_dim: int = 1024, dropout: float = 0.1,
                 max_positions: int = 40, regions: int = 49):
        super().__init__()
        self.config = {"vocab_size": vocab_size, "feature_dim": feature_dim, "d_model": d_model,
                           "layers": layers, "heads": heads, "ff_dim": ff_dim, "dropout": dropout,
                           "max_positions": max_positions, "regions": regions}
        self.project = nn.Sequential(nn.Linear(feature_dim, d_model), nn.LayerNorm(d_model))
        self.region_pos = nn.Parameter(torch.zeros(1, regions + 1, d_model))
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_positions, d_model)
        layer = nn.TransformerDecoderLayer(d_model, heads, ff_dim, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, vocab_size)
        self.out.weight = self.embed.weight  # tied input/output embeddings
        nn.init.normal_(self.embed.weight, std=d_model ** -0.5)
        nn.init.normal_(self.region_pos, std=0.02)

    def encode(self, fmap: torch.Tensor) -> State:
        regions = fmap.flatten(2).transpose(1, 2).float()  # (B, N, C)
        tokens = torch.cat([regions.mean(1, keepdim=True), regions], 1)
        memory = self.project(tokens) + self.region_pos[:, : tokens.shape[1]]
        return {"memory": self.dropout(memory)}

    def init_state(self, memory: State) -> State:
        """The memory plus, per layer, the cross-attention keys/values of the memory (computed
        once per image) and an empty self-attention key/value cache."""
        state = dict(memory)
        mem = memory["memory"]
        batch = mem.shape[0]
        for i, layer in enumerate(self.decoder.layers):
            attn = layer.multihead_attn
            d = attn.embed_dim
            k = F.linear(mem, attn.in_proj_weight[d : 2 * d], attn.in_proj_bias[d : 2 * d])
            v = F.linear(mem, attn.in_proj_weight[2 * d :], attn.in_proj_bias[2 * d :])
            state[f"cross_k{i}"], state[f"cross_v{i}"] = self._heads(k, attn), self._heads(v, attn)
            empty = mem.new_zeros((batch, attn.num_heads, 0, d // attn.num_heads))
            state[f"self_k{i}"], state[f"self_v{i}"] = empty, empty
        return state

    @staticmethod
    def _heads(x: torch.Tensor, attn: nn.MultiheadAttention) -> torch.Tensor:
        """(B, T, d) -> (B, heads, T, d / heads)."""
        b, t, d = x.shape
        return x.view(b, t, attn.num_heads, d // attn.num_heads).transpose(1, 2)

    @staticmethod
    def _merge(x: torch.Tensor) -> torch.Tensor:
        b, h, t, dh = x.shape
        return x.transpose(1, 2).reshape(b, t, h * dh)

    def _decode(self, memory: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        t = inputs.shape[1]
        if t > self.pos.num_embeddings:
            raise ValueError(f"caption longer than {self.pos.num_embeddings} tokens")
        x = self.embed(inputs) * (self.embed.embedding_dim ** 0.5) + self.pos.weight[:t]
        causal = torch.triu(torch.full((t, t), float("-inf")), diagonal=1)
        h = self.decoder(self.dropout(x), memory, tgt_mask=causal, tgt_is_causal=True)
        return self.out(self.norm(h))

    def forward(self, memory: State, inputs: torch.Tensor, lengths: torch.Tensor | None = None):
        return self._decode(memory["memory"], inputs), inputs.new_zeros((), dtype=torch.float32)

    def step(self, state: State, prefix: torch.Tensor):
        """Log-probabilities of the next token after `prefix`, feeding only its last token:
        the keys/values of the earlier tokens are in `state` (the cache `init_state` starts).
        The same computation as `nn.TransformerDecoderLayer` (pre-norm, GELU) on its weights;
        a test checks it against the full forward pass. Dropout is applied as in training
        when the module is in training mode."""
        t = prefix.shape[1] - 1  # position of the token fed now
        if t >= self.pos.num_embeddings:
            raise ValueError(f"caption longer than {self.pos.num_embeddings} tokens")
        state = dict(state)
        x = self.embed(prefix[:, -1:]) * (self.embed.embedding_dim ** 0.5) + self.pos.weight[t : t + 1]
        x = self.dropout(x)
        p = self.dropout.p if self.training else 0.0
        for i, layer in enumerate(self.decoder.layers):
            sa = layer.self_attn
            q, k, v = F.linear(layer.norm1(x), sa.in_proj_weight, sa.in_proj_bias).chunk(3, -1)
            state[f"self_k{i}"] = torch.cat([state[f"self_k{i}"], self._heads(k, sa)], 2)
            state[f"self_v{i}"] = torch.cat([state[f"self_v{i}"], self._heads(v, sa)], 2)
            a = F.scaled_dot_product_attention(self._heads(q, sa), state[f"self_k{i}"], state[f"self_v{i}"],
                                               dropout_p=p)
            x = x + layer.dropout1(sa.out_proj(self._merge(a)))
            ca = layer.multihead_attn
            d = ca.embed_dim
            q = F.linear(layer.norm2(x), ca.in_proj_weight[:d], ca.in_proj_bias[:d])
            a = F.scaled_dot_product_attention(self._heads(q, ca), state[f"cross_k{i}"], state[f"cross_v{i}"],
                                               dropout_p=p)
            x = x + layer.dropout2(ca.out_proj(self._merge(a)))
            ff = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm3(x)))))
            x = x + layer.dropout3(ff)
        logits = self.out(self.norm(x[:, 0]))
        return logits.float().log_softmax(-1), state

ARCHITECTURES = {
    ShowAttendTellDecoder.arch: ShowAttendTellDecoder,
    TransformerCaptionDecoder.arch: TransformerCaptionDecoder,
    "sat": ShowAttendTellDecoder,
}


def build_decoder(arch: str, **config) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise InvalidInputError(f"unknown captioner architecture {arch!r}; choose from "
                         f"{', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch](**config)
