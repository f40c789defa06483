"""The τ-window MLP: what each output may depend on, padding before the start, streaming."""

import pytest
import torch

from charlm.models import build_model

VOCAB, CONTEXT = 9, 4


def make_mlp(**options):
    torch.manual_seed(0)
    model, _ = build_model("mlp", VOCAB, context=CONTEXT, hidden_size=32, **options)
    return model.eval()


def ids_of(length, seed=0):
    return torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("embedding_dim", [16, None])
def test_output_depends_only_on_the_last_tau_tokens(embedding_dim):
    model = make_mlp(embedding_dim=embedding_dim)
    ids = ids_of(12)
    logits, _ = model(ids)
    t = 8  # logits[:, t] predict token t+1 from ids[t−τ+1 .. t]
    for position, should_change in [(t - CONTEXT, False), (0, False), (t + 1, False),
                                     (t - CONTEXT + 1, True), (t, True)]:
        perturbed = ids.clone()
        perturbed[0, position] = (perturbed[0, position] + 1) % VOCAB
        changed = not torch.equal(model(perturbed)[0][:, t], logits[:, t])
        assert changed == should_change, f"perturbing position {position}"


def test_positions_before_the_start_are_padding():
    model = make_mlp(embedding_dim=16)
    assert model.embedding.num_embeddings == VOCAB + 1  # row V is the padding
    state = model.init_state(2, "cpu")
    assert state.shape == (2, CONTEXT) and (state == VOCAB).all()
    ids = ids_of(2)
    logits, new_state = model(ids)
    assert new_state.tolist() == [[VOCAB, VOCAB, ids[0, 0].item(), ids[0, 1].item()]]
    # The padding row really is used: changing it changes the first outputs.
    with torch.no_grad():
        model.embedding.weight[VOCAB] += 1.0
    assert not torch.allclose(model(ids)[0], logits)


def test_streaming_in_chunks_equals_one_pass():
    model = make_mlp(dropout=0.5)  # eval mode: dropout off
    ids = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(2))
    whole, whole_state = model(ids)
    state, parts = None, []
    for chunk in ids.split([1, 2, 6, 11], dim=1):  # chunks shorter than τ too
        logits, state = model(chunk, state)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), whole)
    assert torch.equal(state, ids[:, -CONTEXT:]) and torch.equal(whole_state, state)


def test_a_window_model_learns_a_rule_it_can_see():
    # Next token = (token three back + 1) mod V: visible to a τ=4 window, impossible
    # for a uniform guess (loss ln 9 ≈ 2.2).
    torch.manual_seed(0)
    model, _ = build_model("mlp", VOCAB, context=CONTEXT, hidden_size=64, embedding_dim=8)
    start = torch.randint(0, VOCAB, (64, 3))
    columns = [start[:, i] for i in range(3)]
    while len(columns) < 16:
        columns.append((columns[-3] + 1) % VOCAB)
    seq = torch.stack(columns, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(30):
        logits, _ = model(seq[:, :-1])
        # from position 3 on, the token three back is in the window
        loss = torch.nn.functional.cross_entropy(
            logits[:, 3:].reshape(-1, VOCAB), seq[:, 4:].reshape(-1)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
