"""Preference tuning (DPO, Rafailov et al. 2023) on the supervised engine: the same model, LoRA, optimizer,
schedule, checkpoints and resume; only the rows and the loss differ.

A row is a pair: the prompt with the preferred answer and with the dispreferred one, each rendered by the chat
template with the loss on that last answer only (its end-of-turn token included). The reference model is the model
as tuning starts (the base, or the supervised adapter a continuation starts from): its log-probabilities of every
pair are computed once, before the first step, with no second copy of the weights and no adapter switching. They
depend only on the starting weights, so a resumed run recomputes the same values.

Loss per pair: -log sigmoid(beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected)))),
averaged over the batch's pairs. Both answers of every pair of a batch run in one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunery.text.chat_template import IGNORE_INDEX, Rendered

TRAIN_REWARD_ACCURACY = "/train_reward_accuracy"  # pairs whose preferred answer gained more than the other
TRAIN_REWARD_MARGIN = "/train_reward_margin"  # mean beta * (gain of the preferred - gain of the dispreferred)
TRAIN_CHOSEN_LOGPS = "/train_chosen_logps"  # mean log-probability of the preferred answers (policy)
TRAIN_REJECTED_LOGPS = "/train_rejected_logps"
TRAIN_PAIRS = "/train_num_pairs"
EVAL_REWARD_ACCURACY = "/eval_reward_accuracy"
EVAL_REWARD_MARGIN = "/eval_reward_margin"
EVAL_PAIRS = "/eval_num_pairs"


@dataclass
class PairRows:
    """One preference pair as two rendered rows, and the reference's log-probabilities of each answer."""

    chosen: Rendered
    rejected: Rendered
    reference: tuple[float, float] | None = field(default=None)

    @property
    def input_ids(self) -> list[int]:
        """The longer row: what batching by length sorts on."""
        return max(self.chosen.input_ids, self.rejected.input_ids, key=len)


def render_pairs(pairs, template, max_length: int) -> list[PairRows]:
    """Each pair's two rows, the loss on the final answer only (an earlier model turn of the prompt is context)."""
    out = []
    for p in pairs:
        start = len(template.render_prompt(p.prompt, p.system))
        rows = []
        for answer in (p.chosen, p.rejected):
            r = template.render(p.example(answer), max_length)
            rows.append(Rendered(r.input_ids, [IGNORE_INDEX] * min(start, len(r.labels)) + r.labels[start:], r.media))
        out.append(PairRows(*rows))
    return out


def sequence_logps(model, ids, labels, runtime):
    """Sum of log-probabilities of each row's supervised tokens, (rows,), in float32."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    ids, labels = ids.to(runtime.device), labels.to(runtime.device)
    with runtime.autocast_context():
        hidden = base.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    sel = targets != IGNORE_INDEX
    head = base.get_output_embeddings().weight
    rows = sel.nonzero()[:, 0]
    h, gold = hidden[:, :-1][sel], targets[sel]
    cap = getattr(base.config, "final_logit_softcapping", None)
    parts = []
    for k in range(0, h.shape[0], 1024):  # the vocabulary projection a chunk of tokens at a time
        logits = (h[k:k + 1024].float() @ head.float().T)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        parts.append(torch.log_softmax(logits, -1).gather(1, gold[k:k + 1024, None])[:, 0])
    per_token = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
    return torch.zeros(ids.shape[0], device=per_token.device, dtype=torch.float32).index_add(0, rows, per_token)


def forward(model, rows: list[PairRows], pad_id: int, runtime):
    """Policy log-probabilities (chosen, rejected), each (pairs,), from one forward pass over all 2 x pairs rows."""
    from tunery.text.batching import collate

    ids, labels = collate([r.chosen for r in rows] + [r.rejected for r in rows], pad_id)
    logps = sequence_logps(model, ids, labels, runtime)
    return logps[:len(rows)], logps[len(rows):]


def set_reference(model, rows: list[PairRows], pad_id: int, runtime, batch_size: int) -> None:
    """The starting model's log-probabilities of every pair's answers (no gradient): DPO's reference."""
    import torch

    todo = [r for r in rows if r.reference is None]
    with torch.no_grad():
        for k in range(0, len(todo), batch_size):
            chunk = todo[k:k + batch_size]
            chosen, rejected = forward(model, chunk, pad_id, runtime)
            for r, c, j in zip(chunk, chosen.tolist(), rejected.tolist()):
                r.reference = (c, j)


def loss(model, rows: list[PairRows], pad_id: int, runtime, beta: float):
    """(summed loss over the pairs, with gradient; metric sums): the caller divides by the global pair count."""
    import torch
    import torch.nn.functional as F

    chosen, rejected = forward(model, rows, pad_id, runtime)
    ref = torch.tensor([r.reference for r in rows], dtype=torch.float32, device=chosen.device)
    chosen_reward = beta * (chosen - ref[:, 0])
    rejected_reward = beta * (rejected - ref[:, 1])
    margin = chosen_reward - rejected_reward
    total = -F.logsigmoid(margin).sum()
    sums = {"correct": float((margin > 0).sum()), "margin": float(margin.detach().sum()),
            "chosen": float(chosen.detach().sum()), "rejected": float(rejected.detach().sum())}
    return total, sums
