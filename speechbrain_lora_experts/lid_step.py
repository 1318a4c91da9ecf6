"""Whisper's language-identification step, without projecting the encoder.

Whisper names the spoken language from one decoder step on
``<|startoftranscript|>``. Run as an ordinary decoder call, that step
projects the whole encoder output to cross-attention keys and values in every
decoder layer, ``2 * layers * frames * d^2`` multiply-adds (at a 30 s window
on whisper-base, about a tenth of the encoder's cost), only to read them with
one query. For a single query the projections move to the query's side:

* scores: ``q . (W_k e_t) = (W_k^T q) . e_t``, so each head maps its query
  into the encoder's space once and scores the raw frames;
* values: the softmax weights sum to one, so ``sum_t p_t (W_v e_t + b_v)``
  is ``W_v (sum_t p_t e_t) + b_v``: one projection of the averaged frames.

That costs ``O(frames * d)`` per head instead of ``O(frames * d^2)``, with the
same result up to float rounding. Self-attention over one token is its value
(the softmax of one score is 1), and only the candidate languages' rows of
the output embedding are scored. This is what makes the default
``whisper_lid`` gate of a fused model cheap when the experts leave the
encoder frozen: the gate's step no longer costs a second set of
cross-attention projections beside the decoding's own.

The step is exact only where the cross-attention projections are plain
weights: an ``nn.Linear``, or an expert layer with its experts off (merged
updates live in the weight). Anything else (experts routed or mixed in the
cross-attention, or a decoder training with dropout) takes the ordinary
decoder call.

Authors
 * speechbrain-lora-experts developers 2026
"""

import torch

from speechbrain_lora_experts.attach import whisper_model
from speechbrain_lora_experts.experts import LoRAExpertsLinear


def plain_weights(linear):
    """``(weight, bias)`` a layer applies, when it is one fixed linear map.

    Arguments
    ---------
    linear : torch.nn.Module
        An ``nn.Linear`` or a ``LoRAExpertsLinear``.

    Returns
    -------
    tuple or None
        ``(weight [out, in], bias [out] or None)``; None when the layer's
        output depends on expert routing (then only calling it is exact).

    Example
    -------
    >>> from speechbrain_lora_experts.experts import ExpertRouting
    >>> layer = torch.nn.Linear(3, 2)
    >>> plain_weights(layer)[0] is layer.weight
    True
    >>> routing = ExpertRouting()
    >>> experts = LoRAExpertsLinear(layer, 2, 1, 1, routing=routing)
    >>> plain_weights(experts)[0] is layer.weight  # experts off
    True
    >>> routing.route(torch.tensor([0]))
    >>> plain_weights(experts) is None
    True
    """
    if isinstance(linear, LoRAExpertsLinear):
        if linear.routing.mode != "off":
            return None
        linear = linear.base
    if type(linear) is not torch.nn.Linear:
        return None
    return linear.weight, linear.bias


def _cross_attention(attn, hidden, enc_states):
    """One query's cross-attention, projections on the query's side."""
    key = plain_weights(attn.k_proj)
    value = plain_weights(attn.v_proj)
    if key is None or value is None:
        return None
    batch, _, dim = enc_states.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    query = (attn.q_proj(hidden) * attn.scaling).view(batch, heads, head_dim)
    # A key bias adds the same q . b_k to every frame's score: the softmax
    # ignores it.
    w_k = key[0].view(heads, head_dim, dim)
    query_in = torch.einsum("bhk,hkd->bhd", query, w_k.to(query.dtype))
    scores = query_in @ enc_states.transpose(1, 2).to(query.dtype)
    probs = scores.softmax(dim=-1)
    context = probs @ enc_states.to(probs.dtype)  # [B, heads, dim]
    w_v = value[0].view(heads, head_dim, dim).to(context.dtype)
    out = torch.einsum("bhd,hkd->bhk", context, w_v).reshape(batch, 1, -1)
    if value[1] is not None:
        out = out + value[1].to(out.dtype)
    return attn.out_proj(out)


def language_logits(whisper, enc_states, token_ids, start_id):
    """Logits of ``token_ids`` after one decoder step on ``start_id``.

    Arguments
    ---------
    whisper : torch.nn.Module
        SpeechBrain's Whisper wrapper or a HF Whisper model.
    enc_states : torch.Tensor
        ``[B, frames, d_model]`` encoder output.
    token_ids : torch.LongTensor
        ``[K]`` tokens to score (the candidate languages).
    start_id : int
        The token the step reads (``<|startoftranscript|>``).

    Returns
    -------
    torch.Tensor or None
        ``[B, K]`` float logits, equal to the decoder's (up to rounding);
        None when a cross-attention projection is not a plain weight (call
        the decoder instead).

    Example
    -------
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     tiny_whisper_model,
    ... )
    >>> model = tiny_whisper_model().eval()
    >>> enc = torch.randn(2, 4, model.config.d_model)
    >>> ids = torch.tensor([5, 7, 9])
    >>> fast = language_logits(model, enc, ids, start_id=1)
    >>> out = model.decoder(
    ...     input_ids=torch.ones(2, 1, dtype=torch.long),
    ...     encoder_hidden_states=enc,
    ... ).last_hidden_state
    >>> slow = out[:, -1] @ model.decoder.embed_tokens.weight[ids].t()
    >>> bool(torch.allclose(fast, slow, atol=1e-5))
    True
    """
    model = whisper_model(whisper)
    decoder = model.decoder
    config = model.config
    dropout = (
        config.dropout,
        config.attention_dropout,
        config.activation_dropout,
    )
    if decoder.training and any(dropout):
        return None  # this step has no dropout; the decoder's call does
    batch = enc_states.shape[0]
    start = torch.full(
        (batch, 1), start_id, dtype=torch.long, device=enc_states.device
    )
    hidden = decoder.embed_tokens(start) + decoder.embed_positions.weight[:1]
    for layer in decoder.layers:
        attn = layer.self_attn
        # Attention over the one token is that token's value.
        step = attn.out_proj(attn.v_proj(layer.self_attn_layer_norm(hidden)))
        hidden = hidden + step
        cross = _cross_attention(
            layer.encoder_attn,
            layer.encoder_attn_layer_norm(hidden),
            enc_states,
        )
        if cross is None:
            return None
        hidden = hidden + cross
        ffn = layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden)))
        hidden = hidden + layer.fc2(ffn)
    hidden = decoder.layer_norm(hidden)[:, -1]
    rows = decoder.embed_tokens.weight[token_ids.to(hidden.device)]
    return (hidden @ rows.to(hidden.dtype).t()).float()
